"""The update-rule reference against arithmetic done by hand, and against each framework's own optimizer."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from conformance import backends
from conformance.backends import native_optimizers as native
from conformance.backends.base import NotApplicable
from conformance.cases import Schedule
from conformance.reference import optimizers as ref

DECLARED = {name: backends.load(name).optimizers for name in ("torch", "tensorflow", "jax")}

TORCH, KERAS, OPTAX = DECLARED["torch"].switches, DECLARED["tensorflow"].switches, DECLARED["jax"].switches
EPS = 1e-8  # torch's and optax's Adam epsilon


def run(rule, given, switches, gradients, start=None, framework="torch"):
    """The reference from `start` (default x = 2) over a list of gradient dicts; returns (params, state)."""
    hyper = ref.hyperparameters(rule, framework, DECLARED[framework], given)
    params = {name: np.asarray(value, dtype=np.float64) for name, value in (start or {"x": 2.0}).items()}
    state = ref.init(rule, hyper, switches, params)
    for grads in gradients:
        params, state = ref.step(rule, hyper, switches, params, grads, state)
    return params, state


def xs(*values):
    return [{"x": np.asarray(v, dtype=np.float64)} for v in values]


# ---------------------------------------------------------------------------------------------------- by hand


def test_adam_first_step_is_the_articles():
    params, state = run("adam", {"lr": 0.1}, TORCH, xs(6.0))
    m, v = 0.1 * 6, 0.001 * 36  # (1 - beta1) g, (1 - beta2) g^2
    assert params["x"] == pytest.approx(2 - 0.1 * (m / 0.1) / (math.sqrt(v / 0.001) + EPS), rel=1e-15)
    assert params["x"] == pytest.approx(1.9, abs=1e-8)
    assert (state["exp_avg"]["x"], state["exp_avg_sq"]["x"], int(state["step"]["x"])) == pytest.approx((m, v, 1))


def test_adam_second_step_by_hand():
    params, _ = run("adam", {"lr": 0.1}, TORCH, xs(6.0, 4.2))
    x1 = 2 - 0.1 * 6 / (6 + EPS)
    m2, v2 = 0.9 * 0.6 + 0.1 * 4.2, 0.999 * 0.036 + 0.001 * 4.2**2  # 0.96, 0.053604
    m_hat, v_hat = m2 / (1 - 0.9**2), v2 / (1 - 0.999**2)
    assert params["x"] == pytest.approx(x1 - 0.1 * m_hat / (math.sqrt(v_hat) + EPS), rel=1e-14)


def test_adam_keras_folds_the_bias_correction_into_the_step_size():
    as_given = dataclasses.replace(KERAS, hyperparameter_precision="as_given")
    params, _ = run("adam", {"lr": 0.1}, as_given, xs(6.0), framework="tensorflow")
    alpha = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9)
    assert params["x"] == pytest.approx(2 - 0.6 * alpha / (math.sqrt(0.036) + 1e-7), rel=1e-15)


def test_keras_float64_adam_uses_float32_betas_in_its_bias_corrections():
    params, _ = run("adam", {"lr": 0.125}, KERAS, xs(6.0), framework="tensorflow")  # 0.125 is exact in float32
    beta1, beta2 = float(np.float32(0.9)), float(np.float32(0.999))  # 0.8999999761..., 0.9990000128...
    alpha = 0.125 * math.sqrt(1 - beta2) / (1 - beta1)
    assert params["x"] == pytest.approx(2 - 0.6 * alpha / (math.sqrt(0.036) + 1e-7), rel=1e-15)


def test_keras_runs_a_float64_step_with_float32_hyperparameters():
    params, _ = run("sgd", {"lr": 0.1}, KERAS, xs(6.0), framework="tensorflow")
    assert params["x"] == 2 - float(np.float32(0.1)) * 6 != 2 - 0.1 * 6
    hyper = ref.hyperparameters("adagrad", "tensorflow", DECLARED["tensorflow"], {"lr": 0.1})
    assert ref.init("adagrad", hyper, KERAS, {"x": np.asarray(2.0)})["sum"]["x"] == float(np.float32(0.1))


def test_sgd_plain():
    assert run("sgd", {"lr": 0.1}, TORCH, xs(6.0))[0]["x"] == pytest.approx(1.4, rel=1e-15)


def test_sgd_momentum_two_steps_same_path_different_buffers():
    given = {"lr": 0.125, "momentum": 0.5}  # exact in float32, which Keras rounds both to
    torch_params, torch_state = run("momentum", given, TORCH, xs(6.0, 4.0))
    keras_params, keras_state = run("momentum", given, KERAS, xs(6.0, 4.0), framework="tensorflow")
    # torch: buf = 6, x = 2 - 0.75 = 1.25; buf = 0.5 * 6 + 4 = 7, x = 1.25 - 0.875 = 0.375
    assert torch_params["x"] == keras_params["x"] == 0.375
    assert torch_state["momentum"]["x"] == 7.0
    assert keras_state["momentum"]["x"] == -0.125 * 7.0  # Keras: m = 0.5 m - lr g, holding -lr * buf


def test_sgd_dampening_skips_the_first_step():
    params, state = run("momentum", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}, TORCH, xs(6.0, 4.0))
    assert state["momentum"]["x"] == pytest.approx(0.9 * 6 + 0.5 * 4)  # buf = 6 first, then 7.4
    assert params["x"] == pytest.approx(2 - 0.6 - 0.74)


@pytest.mark.parametrize("switches, framework", [(TORCH, "torch"), (KERAS, "tensorflow"), (OPTAX, "jax")])
def test_nesterov_two_steps(switches, framework):
    params, _ = run("nesterov", {"lr": 0.125, "momentum": 0.5}, switches, xs(6.0, 4.0), framework=framework)
    # buf = 6, x = 2 - 0.125 (6 + 0.5 * 6) = 0.875; buf = 3 + 4 = 7, x = 0.875 - 0.125 (4 + 0.5 * 7) = -0.0625
    assert params["x"] == pytest.approx(-0.0625, rel=1e-14)


def test_weight_decay_l2_goes_through_the_momentum_buffer_decoupled_does_not():
    given = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.5}
    l2, _ = run("momentum", given, TORCH, xs(6.0, 4.0))
    decoupled, _ = run("momentum", given, dataclasses.replace(TORCH, weight_decay="decoupled"), xs(6.0, 4.0))
    # L2: g = 7, buf = 7, x = 1.3; g = 4 + 0.65, buf = 6.3 + 4.65, x = 1.3 - 1.095
    assert l2["x"] == pytest.approx(0.205, rel=1e-14)
    # decoupled: x = 2 - 0.1 * 0.5 * 2 - 0.6 = 1.3; x = 1.3 - 0.065 - 0.1 * (5.4 + 4)
    assert decoupled["x"] == pytest.approx(0.295, rel=1e-14)


def test_adamw_decays_before_the_adam_step():
    params, _ = run("adamw", {"lr": 0.1, "weight_decay": 0.5}, TORCH, xs(6.0))
    assert params["x"] == pytest.approx(2 * (1 - 0.1 * 0.5) - 0.1 * 6 / (6 + EPS), rel=1e-15)


def test_amsgrad_maximum_of_v_or_of_v_hat():
    x1 = 2 - 0.1 * 6 / (6 + EPS)
    m_hat = (0.9 * 0.6 + 0.1 * 1) / (1 - 0.9**2)
    v2 = 0.999 * 0.036 + 0.001 * 1  # 0.036964 > v1 = 0.036, but v2 / 0.001999 = 18.49 < v1 / 0.001 = 36
    torch_like, _ = run("amsgrad", {"lr": 0.1}, TORCH, xs(6.0, 1.0))
    optax_like, state = run("amsgrad", {"lr": 0.1}, OPTAX, xs(6.0, 1.0), framework="jax")
    assert torch_like["x"] == pytest.approx(x1 - 0.1 * m_hat / (math.sqrt(v2 / (1 - 0.999**2)) + EPS), rel=1e-14)
    assert optax_like["x"] == pytest.approx(x1 - 0.1 * m_hat / (math.sqrt(36.0) + EPS), rel=1e-14)
    assert state["max_exp_avg_sq"]["x"] == pytest.approx(36.0)


def test_rmsprop_epsilon_outside_or_inside_the_root():
    given = {"lr": 0.01, "rho": 0.99, "eps": 1e-4}
    outside, _ = run("rmsprop", given, TORCH, xs(6.0))
    inside, _ = run("rmsprop", given, KERAS, xs(6.0), framework="tensorflow")
    assert outside["x"] == pytest.approx(2 - 0.01 * 6 / (math.sqrt(0.36) + 1e-4), rel=1e-15)  # v = 0.01 * 36
    assert inside["x"] == pytest.approx(2 - float(np.float32(0.01)) * 6 / math.sqrt(0.36 + 1e-4), rel=1e-15)


def test_rmsprop_centered():
    params, _ = run("rmsprop", {"lr": 0.01, "rho": 0.99, "eps": 0.0, "centered": True}, TORCH, xs(6.0))
    assert params["x"] == pytest.approx(2 - 0.01 * 6 / math.sqrt(0.36 - 0.06**2), rel=1e-15)


def test_rmsprop_momentum_three_buffers_one_path():
    given = {"lr": 0.01, "rho": 0.99, "eps": 0.0, "momentum": 0.9}
    s1, s2 = 6 / math.sqrt(0.36), 4 / math.sqrt(0.99 * 0.36 + 0.01 * 16)
    expected = 2 - 0.01 * s1 - 0.01 * (0.9 * s1 + s2)
    forms = ("gradient", "step", "update")
    runs = {
        form: run("rmsprop", given, dataclasses.replace(TORCH, rmsprop_momentum=form), xs(6.0, 4.0)) for form in forms
    }
    for params, _ in runs.values():
        assert params["x"] == pytest.approx(expected, rel=1e-14)
    buffers = {name: state["momentum"]["x"] for name, (_, state) in runs.items()}
    assert buffers == pytest.approx(
        {"gradient": 0.9 * s1 + s2, "step": 0.01 * (0.9 * s1 + s2), "update": -0.01 * (0.9 * s1 + s2)}
    )


def test_adagrad_by_hand():
    torch_like, _ = run("adagrad", {"lr": 0.1}, TORCH, xs(6.0, 4.0))  # accumulator from 0, eps 1e-10 outside
    x1 = 2 - 0.1 * 6 / (6 + 1e-10)
    assert torch_like["x"] == pytest.approx(x1 - 0.1 * 4 / (math.sqrt(52) + 1e-10), rel=1e-15)
    optax_like, state = run("adagrad", {"lr": 0.1}, OPTAX, xs(6.0), framework="jax")  # from 0.1, eps 1e-7 inside
    assert optax_like["x"] == pytest.approx(2 - 0.1 * 6 / math.sqrt(36.1 + 1e-7), rel=1e-15)
    assert state["sum"]["x"] == pytest.approx(36.1)


def test_a_variable_without_a_gradient():
    start, given = {"x": 2.0, "b": 0.5}, {"lr": 0.1}
    gradients = [{"x": 6.0, "b": 2.0}, {"x": 4.0, "b": None}, {"x": 1.0, "b": 2.0}]
    skipped, skipped_state = run("adam", given, TORCH, gradients, start)
    counted, counted_state = run("adam", given, KERAS, gradients, start, framework="tensorflow")
    zeroed, zeroed_state = run("adam", given, OPTAX, gradients, start, framework="jax")
    alone, _ = run("adam", given, TORCH, [{"b": 2.0}, {"b": 2.0}], {"b": 0.5})
    assert skipped["b"] == alone["b"] and int(skipped_state["step"]["b"]) == 2  # as if step 2 never happened
    assert int(counted_state["step"]["b"]) == 3  # Keras' one count moved on: step 3 is bias-corrected as t = 3
    assert int(zeroed_state["step"]["b"]) == 3
    assert zeroed_state["exp_avg"]["b"] == pytest.approx(0.1 * 2 * 0.81 + 0.1 * 2)  # decayed over the zero gradient
    assert len({float(skipped["b"]), float(counted["b"]), float(zeroed["b"])}) == 3


def test_adadelta_by_hand():
    """Zeiler's rule: v = rho v + (1 - rho) g^2, delta = sqrt(u + eps) / sqrt(v + eps) g, u likewise of delta."""
    params, state = run("adadelta", {"lr": 1.0, "rho": 0.9, "eps": 1e-2}, TORCH, xs(3.0, -1.0))
    v1 = 0.1 * 9
    delta1 = math.sqrt(1e-2) / math.sqrt(v1 + 1e-2) * 3
    u1 = 0.1 * delta1**2
    v2 = 0.9 * v1 + 0.1 * 1
    delta2 = math.sqrt(u1 + 1e-2) / math.sqrt(v2 + 1e-2) * -1
    assert float(params["x"]) == pytest.approx(2 - delta1 - delta2, rel=1e-15)
    assert float(state["acc_delta"]["x"]) == pytest.approx(0.9 * u1 + 0.1 * delta2**2, rel=1e-15)


def test_adamax_by_hand():
    given = {"lr": 0.1, "eps": 0.5}
    torch_like, state = run("adamax", given, TORCH, xs(6.0, -2.0))  # u = max(0.999 u, |g| + eps)
    u1, u2 = 6.5, max(0.999 * 6.5, 2.5)
    x1 = 2 - 0.1 / (1 - 0.9) * (0.1 * 6) / u1
    m2 = 0.9 * 0.6 + 0.1 * -2.0
    assert torch_like["x"] == pytest.approx(x1 - 0.1 / (1 - 0.81) * m2 / u2, rel=1e-14)
    assert state["exp_inf"]["x"] == pytest.approx(u2) and state["exp_avg"]["x"] == pytest.approx(m2)
    keras_like, _ = run("adamax", given, KERAS, xs(6.0), framework="tensorflow")  # u = max(0.999 u, |g|), u + eps
    lr32, beta32 = float(np.float32(0.1)), float(np.float32(0.9))  # a float64 Keras run's float32 casts
    assert keras_like["x"] == pytest.approx(2 - lr32 * 0.6 / ((1 - beta32) * (6.0 + 0.5)), rel=1e-14)


def test_global_clip_by_hand():
    grads = {"w": np.array([3.0, 0.0]), "b": np.array(4.0), "unused": None}  # global norm 5
    exact = ref.clipped(grads, {"clip_norm": 1.0}, OPTAX)
    assert exact["w"].tolist() == pytest.approx([0.6, 0.0], rel=1e-15) and exact["b"] == pytest.approx(0.8, rel=1e-15)
    assert exact["unused"] is None  # no gradient stays no gradient, and counts nothing towards the norm
    shifted = ref.clipped(grads, {"clip_norm": 1.0}, TORCH)  # torch divides by norm + 1e-6
    assert shifted["b"] == pytest.approx(4 / (5 + 1e-6), rel=1e-15) and shifted["b"] != exact["b"]


def test_a_norm_below_the_threshold_is_left_exactly_as_it_is():
    grads = {"w": np.array([3.0, 0.0]), "b": np.array(4.0)}
    for switches in (TORCH, KERAS, OPTAX):
        for clip in ({"clip_norm": 5.0 + 2e-6}, {"clip_norm_per_variable": 4.0}, {"clip_value": 4.0}):
            kept = ref.clipped(grads, clip, switches)
            assert all(np.array_equal(kept[name], grads[name]) for name in grads), (clip, switches)


def test_per_variable_and_global_clips_differ_on_two_variables():
    grads = {"w": np.array([3.0, 0.0]), "b": np.array(4.0)}
    each = ref.clipped(grads, {"clip_norm_per_variable": 2.0}, KERAS)
    assert each["w"].tolist() == pytest.approx([2.0, 0.0]) and each["b"] == pytest.approx(2.0)  # each to norm 2
    every = ref.clipped(grads, {"clip_norm": 2.0}, KERAS)
    assert every["w"].tolist() == pytest.approx([1.2, 0.0]) and every["b"] == pytest.approx(1.6)  # together to 2


def test_value_clip_is_elementwise():
    clipped = ref.clipped({"w": np.array([-3.0, 0.5, 2.0])}, {"clip_value": 1.0}, TORCH)
    assert clipped["w"].tolist() == [-1.0, 0.5, 1.0]


def test_the_clip_comes_before_weight_decay_and_the_rule():
    hyper = ref.hyperparameters("sgd", "torch", DECLARED["torch"], {"lr": 0.1, "clip_norm": 1.0, "weight_decay": 0.5})
    params, _ = ref.step("sgd", hyper, OPTAX, {"x": np.array(2.0)}, {"x": np.array(10.0)}, {"step": {"x": 0}})
    assert params["x"] == pytest.approx(2 - 0.1 * (1.0 + 0.5 * 2))  # the gradient clipped to 1, then + wd * p


def test_step_leaves_its_arguments_alone():
    hyper = ref.hyperparameters("adam", "torch", DECLARED["torch"], {"lr": 0.1})
    params = {"x": np.array([2.0, 3.0])}
    state = ref.init("adam", hyper, TORCH, params)
    before = (params["x"].copy(), {slot: {k: v.copy() for k, v in values.items()} for slot, values in state.items()})
    ref.step("adam", hyper, TORCH, params, {"x": np.array([6.0, 1.0])}, state)
    assert np.array_equal(params["x"], before[0])
    assert all(np.array_equal(state[slot]["x"], before[1][slot]["x"]) for slot in state)


# ---------------------------------------------------------------------------------------------------- tables


def test_defaults_fill_what_the_case_leaves():
    assert ref.hyperparameters("rmsprop", "torch", DECLARED["torch"], {"lr": 0.1})["rho"] == 0.99
    assert ref.hyperparameters("rmsprop", "tensorflow", DECLARED["tensorflow"], {"lr": 0.1})["rho"] == 0.9
    assert ref.hyperparameters("amsgrad", "jax", DECLARED["jax"], {"lr": 0.1})["amsgrad"] is True
    assert ref.hyperparameters("adamw", "tensorflow", DECLARED["tensorflow"], {"lr": 0.1})["weight_decay"] == 0.004


@pytest.mark.parametrize(
    "rule, given, problem",
    [
        ("adam", {}, "jax has no default"),
        ("momentum", {"lr": 0.1}, "update.momentum"),
        ("nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": False}, "update.nesterov"),
        ("adagrad", {"lr": 0.1, "momentum": 0.9}, "update.momentum"),
    ],
)
def test_hyperparameters_that_do_not_fit(rule, given, problem):
    with pytest.raises(ValueError, match=problem):
        ref.hyperparameters(rule, "jax", DECLARED["jax"], given)


def test_every_switch_of_every_framework_is_cited():
    """Every switch of a rule the framework has (Keras has no RAdam, so no radam_eps to cite)."""
    for framework, declared in DECLARED.items():
        rules = {ref.base_rule(rule) for rule in declared.defaults}
        for name in ref.UpdateSwitches.names():
            if not any(name in ref.RULE_SWITCHES[rule] for rule in rules):
                continue
            citation = declared.switches.citations[name]
            assert citation.url.startswith("https://github.com/") and ".py" in citation.text, (framework, name)


def test_a_switch_value_must_be_known():
    with pytest.raises(ValueError, match="adam_eps"):
        ref.UpdateSwitches(adam_eps="keras")


def test_explain_lists_what_differs_and_matters():
    everything = ["amsgrad_max", "clip_norm_eps", "cosine_after_decay", "schedule_precision", "no_gradient"]
    assert [d.switch for d in ref.explain("amsgrad", TORCH, OPTAX)] == everything
    cosine = {"amsgrad": False, "schedule": Schedule("cosine", decay_steps=4)}
    assert [d.switch for d in ref.explain("adam", TORCH, OPTAX, cosine)] == [
        "cosine_after_decay",
        "schedule_precision",
        "no_gradient",
    ]
    piecewise = {"amsgrad": False, "schedule": Schedule("piecewise", boundaries=(2,), values=(0.1, 0.05))}
    assert [d.switch for d in ref.explain("adam", TORCH, KERAS, piecewise)] == [
        "adam_eps",
        "weight_decay",
        "piecewise_boundary",
        "schedule_precision",
        "no_gradient",
        "hyperparameter_precision",
    ]
    assert [d.switch for d in ref.explain("adam", TORCH, OPTAX, {"amsgrad": False})] == ["no_gradient"]
    clipping = {"amsgrad": False, "clip_norm": 1.0}
    assert [d.switch for d in ref.explain("adam", TORCH, OPTAX, clipping)] == ["clip_norm_eps", "no_gradient"]
    assert ref.explain("adam", TORCH, TORCH) == []
    (eps,) = [d for d in ref.explain("adam", TORCH, KERAS) if d.switch == "adam_eps"]
    assert [c.url.split("/")[4] for c in eps.citations] == ["pytorch", "keras"]
    plain_sgd = ref.explain("sgd", TORCH, KERAS, {"weight_decay": 0.1, "momentum": 0})
    assert "weight_decay" not in [d.switch for d in plain_sgd]  # L2 and decoupled are one update without momentum
    assert [
        d.switch
        for d in ref.explain_defaults(
            "adam", "torch", DECLARED["torch"], "tensorflow", DECLARED["tensorflow"], {"lr": 0.1}
        )
    ] == ["eps"]


def test_design_facts_adam_with_tiny_gradients():
    """DESIGN.md: 10 Adam steps on s (3x + 5 - 10)^2 from x = 2, lr = 0.1."""

    def ten_steps(switches, framework, scale, **given):
        hyper = ref.hyperparameters("adam", framework, DECLARED[framework], {"lr": 0.1, **given})
        params = {"x": np.asarray(2.0)}
        state = ref.init("adam", hyper, switches, params)
        for _ in range(10):
            gradient = scale * 6 * (3 * params["x"] - 5)
            params, state = ref.step("adam", hyper, switches, params, {"x": gradient}, state)
        return float(params["x"])

    ones = [ten_steps(s, f, 1.0) for s, f in [(TORCH, "torch"), (KERAS, "tensorflow"), (OPTAX, "jax")]]
    assert max(ones) - min(ones) < 2e-6  # 1.4e-6 of it is Keras' float32 betas, which a float32 run shares
    assert ten_steps(TORCH, "torch", 1e-9) == pytest.approx(1.70344, abs=5e-6)
    assert ten_steps(OPTAX, "jax", 1e-9) == pytest.approx(1.70344, abs=5e-6)
    assert ten_steps(KERAS, "tensorflow", 1e-9) == pytest.approx(1.99577, abs=5e-6)
    assert ten_steps(KERAS, "tensorflow", 1e-9, eps=1e-8) == pytest.approx(1.96039, abs=5e-6)


def test_importing_imports_no_framework():
    code = (
        "import sys, conformance.reference.optimizers, conformance.backends.native_optimizers; "
        "print([m for m in ('torch', 'tensorflow', 'jax', 'optax', 'keras') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------- native

START = {"w": [2.0, -1.5], "b": 0.5}
# Shrinking gradients, so that amsgrad's running maximum stays at an early step, where it matters which v it keeps.
DENSE = [{"w": [6.0, -12.0], "b": 2.0}, {"w": [0.5, 3.0], "b": -1.0}, {"w": [0.25, -0.1], "b": 0.3}]
GAP = [{"w": [6.0, -12.0], "b": 2.0}, {"w": [0.5, 3.0], "b": None}, {"w": [0.25, -0.1], "b": 0.3}]
# RAdam takes its first rectified step at t = 6 at the earliest (rho_t < t): eight steps
LONG = DENSE + [
    {"w": [1.0, 2.0], "b": -0.5},
    {"w": [-0.3, 0.7], "b": 0.2},
    {"w": [2.0, -1.0], "b": 1.0},
    {"w": [0.1, 0.4], "b": -0.2},
    {"w": [-1.5, 0.5], "b": 0.6},
]
LONG_GAP = GAP + LONG[3:]
# rho_6 = 5.0 exactly, in Python floats (torch) and in float64 jax (optax): torch's rho_t > 5 waits a step longer
RHO_6_AT_THRESHOLD = 0.8397685748659791


def _configs():
    """(rule, hyperparameters) with a description that becomes the test id, as in PyTorch's OptimizerInfo."""
    table = [
        ("sgd", {"lr": 0.1}, "plain"),
        ("sgd", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("momentum", {"lr": 0.1, "momentum": 0.9}, "momentum"),
        ("momentum", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.3}, "weight_decay"),
        ("momentum", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, "dampening"),
        ("nesterov", {"lr": 0.1, "momentum": 0.9}, "nesterov"),
        ("adam", {"lr": 0.1}, "lr"),
        ("adam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3}, "betas-eps"),
        ("adam", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("adam", {"lr": 0.1, "amsgrad": True}, "amsgrad"),
        ("adamw", {"lr": 0.1}, "default-decay"),
        ("adamw", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("adamw", {"lr": 0.1, "weight_decay": 0.3, "amsgrad": True}, "amsgrad"),
        ("amsgrad", {"lr": 0.1, "eps": 1e-3}, "amsgrad"),
        ("rmsprop", {"lr": 0.01}, "lr"),
        ("rmsprop", {"lr": 0.01, "rho": 0.8, "eps": 1e-3}, "rho-eps"),
        ("rmsprop", {"lr": 0.01, "centered": True}, "centered"),
        ("rmsprop", {"lr": 0.01, "momentum": 0.9}, "momentum"),
        ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.3}, "all"),
        ("adagrad", {"lr": 0.1}, "lr"),
        ("adagrad", {"lr": 0.1, "initial_accumulator": 0.5, "eps": 1e-3}, "init-eps"),
        ("adagrad", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("sgd", {"lr": 0.1, "clip_norm": 1.0}, "clip_norm"),
        ("adam", {"lr": 0.1, "clip_norm": 1.0, "weight_decay": 0.3}, "clip_norm-weight_decay"),
        ("adam", {"lr": 0.1, "clip_norm": 100.0}, "clip_norm-below"),
        ("momentum", {"lr": 0.1, "momentum": 0.9, "clip_norm_per_variable": 1.0}, "clip_norm_per_variable"),
        ("rmsprop", {"lr": 0.01, "clip_value": 1.0}, "clip_value"),
        ("adamax", {"lr": 0.1}, "lr"),
        ("adamax", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3}, "betas-eps"),
        ("adamax", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("adadelta", {"lr": 1.0}, "lr"),
        ("adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-3}, "rho-eps"),
        ("adadelta", {"lr": 1.0, "weight_decay": 0.3}, "weight_decay"),
        ("nadam", {"lr": 0.1}, "lr"),
        ("nadam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3}, "betas-eps"),
        ("nadam", {"lr": 0.1, "momentum_decay": 0.5}, "momentum_decay"),
        ("nadam", {"lr": 0.1, "weight_decay": 0.3}, "weight_decay"),
        ("radam", {"lr": 0.1}, "lr"),
        ("radam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-3}, "betas-eps"),
        ("radam", {"lr": 0.1, "beta2": 0.95, "weight_decay": 0.3}, "weight_decay"),
        ("lion", {"lr": 0.1}, "lr"),
        ("lion", {"lr": 0.01, "beta1": 0.5, "beta2": 0.9, "weight_decay": 0.3}, "betas-weight_decay"),
    ]
    for rule, given, desc in table:
        gradients = LONG if rule in ("radam", "lion") else DENSE
        yield pytest.param(rule, given, f"{rule}-{desc}", gradients, id=f"{rule}-{desc}")
    for rule, given, desc in [table[i] for i in (3, 8, 11, 18, 21, 22, 25, 27, 31, 34, 37, 39)]:
        gradients = LONG_GAP if rule in ("radam", "lion") else GAP
        yield pytest.param(rule, given, f"{rule}-{desc}", gradients, id=f"{rule}-{desc}-no-gradient")


NOT_APPLICABLE = {
    ("tensorflow", "momentum-dampening"),
    ("jax", "momentum-dampening"),
    ("jax", "adamw-amsgrad"),
    ("torch", "momentum-clip_norm_per_variable"),
    ("jax", "momentum-clip_norm_per_variable"),
    ("tensorflow", "nadam-momentum_decay"),
    ("jax", "nadam-momentum_decay"),
    *(("tensorflow", f"radam-{desc}") for desc in ("lr", "betas-eps", "weight_decay")),
    *(("torch", f"lion-{desc}") for desc in ("lr", "betas-weight_decay")),
}


def run_torch(rule, given, gradients):
    torch = pytest.importorskip("torch")
    params = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in START.items()}
    optimizer = native.torch_optimizer(rule, given, list(params.values()))
    clip = native.torch_clipping(given)
    for grads in gradients:
        for name, parameter in params.items():
            parameter.grad = None if grads[name] is None else torch.tensor(grads[name], dtype=torch.float64)
        if clip:
            native.build(clip, list(params.values()))
        optimizer.step()
    return {name: p.detach().numpy().copy() for name, p in params.items()}, native.torch_state(optimizer, params)


def run_keras(rule, given, gradients):
    tf = pytest.importorskip("tensorflow")
    variables = {name: tf.Variable(value, dtype=tf.float64, name=name) for name, value in START.items()}
    optimizer = native.keras_optimizer(rule, given)
    for grads in gradients:
        pairs = [(None if g is None else tf.constant(g, tf.float64), variables[name]) for name, g in grads.items()]
        optimizer.apply_gradients(pairs)
    return {name: v.numpy().copy() for name, v in variables.items()}, native.keras_state(optimizer, rule, variables)


def run_optax(rule, given, gradients):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    with jax.enable_x64(True):
        params = {name: jax.numpy.asarray(value, dtype=jax.numpy.float64) for name, value in START.items()}
        optimizer = native.optax_optimizer(rule, given)
        state = optimizer.init(params)
        for grads in gradients:  # jax.grad gives zeros, never None, for an unused input
            grads = {
                name: jax.numpy.zeros_like(params[name]) if g is None else jax.numpy.asarray(g)
                for name, g in grads.items()
            }
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        return {name: np.asarray(p) for name, p in params.items()}, native.optax_state(state, list(params), rule)


RUNNERS = {"torch": run_torch, "tensorflow": run_keras, "jax": run_optax}


def run_reference(framework, rule, given, gradients, switches=None):
    arrays = [{n: None if g is None else np.asarray(g, np.float64) for n, g in grads.items()} for grads in gradients]
    return run(rule, given, switches or DECLARED[framework].switches, arrays, START, framework)


def relative_difference(native_run, reference_run) -> float:
    """The largest relative difference over the parameters and every state slot both keep."""
    (native_params, native_state), (reference_params, reference_state) = native_run, reference_run
    assert set(native_state) <= set(reference_state), f"native slots {sorted(native_state)} unknown to the reference"
    pairs = [(native_params[n], reference_params[n]) for n in reference_params]
    pairs += [(values[n], reference_state[slot][n]) for slot, values in native_state.items() for n in values]
    return max(
        float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.maximum(np.abs(b), 1e-300), initial=0.0))
        for a, b in pairs
    )


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
@pytest.mark.parametrize("rule, given, desc, gradients", _configs())
def test_native_optimizer_equals_the_reference_with_its_switches(framework, rule, given, desc, gradients):
    if (framework, desc) in NOT_APPLICABLE:
        with pytest.raises(NotApplicable):
            native.native_call(framework, rule, given)
        return
    native_run = RUNNERS[framework](rule, given, gradients)
    assert relative_difference(native_run, run_reference(framework, rule, given, gradients)) < 1e-12


PROBES = {  # a case where each switch changes the parameters or the state
    "adam_eps": ("adam", {"lr": 0.1, "eps": 0.5}, DENSE),
    "amsgrad_max": ("amsgrad", {"lr": 0.1}, DENSE),
    "weight_decay": ("adam", {"lr": 0.1, "weight_decay": 0.5}, DENSE),
    "sgd_momentum": ("momentum", {"lr": 0.1, "momentum": 0.9}, DENSE),
    "rmsprop_momentum": ("rmsprop", {"lr": 0.01, "momentum": 0.9}, DENSE),
    "rmsprop_eps": ("rmsprop", {"lr": 0.01, "eps": 0.5}, DENSE),
    "adagrad_eps": ("adagrad", {"lr": 0.1, "eps": 0.5}, DENSE),
    "no_gradient": ("adam", {"lr": 0.1}, GAP),
    "hyperparameter_precision": ("sgd", {"lr": 0.1}, DENSE),
    "clip_norm_eps": ("sgd", {"lr": 1.0, "clip_norm": 10.0}, DENSE),
    "adamax_eps": ("adamax", {"lr": 0.1, "eps": 0.5}, DENSE),
    "nadam_momentum": ("nadam", {"lr": 0.1}, DENSE),
    "nadam_mu_product": ("nadam", {"lr": 0.1}, DENSE),
    "radam_eps": ("radam", {"lr": 0.1, "beta2": 0.9, "eps": 0.5}, LONG),
    "radam_threshold": ("radam", {"lr": 0.1, "beta2": RHO_6_AT_THRESHOLD}, LONG),
}


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize(
    "framework, switch",
    [
        (framework, switch)
        for switch, (rule, _, _) in PROBES.items()
        for framework in ("torch", "tensorflow", "jax")
        if rule in DECLARED[framework].defaults  # a framework without the rule has no value to measure
    ],
)
def test_every_switch_value_is_needed(framework, switch):
    """Setting any other value of a framework's switch loses agreement: the switches are measured, not guessed."""
    rule, given, gradients = PROBES[switch]
    native_run = RUNNERS[framework](rule, given, gradients)
    own = DECLARED[framework].switches
    assert relative_difference(native_run, run_reference(framework, rule, given, gradients)) < 1e-12
    for other in set(ref.SWITCH_MEANINGS[switch]) - {getattr(own, switch)}:
        flipped = dataclasses.replace(own, **{switch: other})
        difference = relative_difference(native_run, run_reference(framework, rule, given, gradients, flipped))
        assert difference == 0.0 if (framework, switch) in IDLE else difference > 1e-9, other


IDLE = {("jax", "nadam_mu_product")}  # optax's nadam keeps no product of momentum factors: the switch does nothing


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
def test_tiny_gradients_separate_keras_from_torch_and_the_reference_follows_each(framework):
    """DESIGN.md's measurement, natively: 10 Adam steps on 1e-9 (3x + 5 - 10)^2, with each framework's autodiff."""
    scale, steps = 1e-9, 10
    if framework == "torch":
        torch = pytest.importorskip("torch")
        x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        optimizer = native.torch_optimizer("adam", {"lr": 0.1}, [x])
        for _ in range(steps):
            optimizer.zero_grad()
            (scale * (3 * x + 5 - 10) ** 2).backward()
            optimizer.step()
        result = float(x.detach())
    elif framework == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        x = tf.Variable(2.0, dtype=tf.float64)
        optimizer = native.keras_optimizer("adam", {"lr": 0.1})
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = scale * (3 * x + 5 - 10) ** 2
            optimizer.apply_gradients([(tape.gradient(loss, x), x)])
        result = float(x.numpy())
    else:
        jax = pytest.importorskip("jax")
        optax = pytest.importorskip("optax")
        with jax.enable_x64(True):
            params = jax.numpy.asarray(2.0, dtype=jax.numpy.float64)
            optimizer = native.optax_optimizer("adam", {"lr": 0.1})
            state = optimizer.init(params)
            for _ in range(steps):
                grad = jax.grad(lambda x: scale * (3 * x + 5 - 10) ** 2)(params)
                updates, state = optimizer.update(grad, state, params)
                params = optax.apply_updates(params, updates)
            result = float(params)
    assert result == pytest.approx({"torch": 1.70344, "tensorflow": 1.99577, "jax": 1.70344}[framework], abs=5e-6)
    hyper = ref.hyperparameters("adam", framework, DECLARED[framework], {"lr": 0.1})
    switches = DECLARED[framework].switches
    params = {"x": np.asarray(2.0)}
    state = ref.init("adam", hyper, switches, params)
    for _ in range(steps):
        params, state = ref.step("adam", hyper, switches, params, {"x": scale * 6 * (3 * params["x"] - 5)}, state)
    assert float(params["x"]) == pytest.approx(result, rel=1e-12)
