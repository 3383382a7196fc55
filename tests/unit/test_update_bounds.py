"""The update properties' derived allowances, against hand-derived values: the gradients' rounding carried by the
trajectory, and which documented differences account for a gap between two frameworks."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import backends, update_properties
from conformance.backends.base import AccumulationRun, UpdateRun
from conformance.reference import optimizers

DECLARED = {name: backends.load(name).optimizers for name in ("torch", "tensorflow", "jax")}

SGD = optimizers.hyperparameters("sgd", "torch", DECLARED["torch"], {"lr": 0.1})


def quadratic(params: dict) -> dict:
    return {"w": 2 * params["w"]}  # the gradient of sum(w ** 2)


def test_sgd_carries_lr_times_the_gradient_bound_through_each_step():
    start, bound = {"w": np.array([1.0, -3.0])}, 1e-6
    reference_at = lambda params: (quadratic(params), {"w": np.full(2, bound)})  # noqa: E731
    switches = DECLARED["torch"].switches
    one = update_properties.gradient_rounding_drift("sgd", SGD, switches, start, reference_at, steps=1)
    two = update_properties.gradient_rounding_drift("sgd", SGD, switches, start, reference_at, steps=2)
    # p1 = 0.8 p0 - lr b; p2 = 0.8 p1 - lr b: the error of step 1 shrinks by 1 - 2 lr, then step 2 adds its own
    # (a difference of two float64 trajectories near |w| = 3: exact to a few ulps of 3, 1e-9 of the drift)
    np.testing.assert_allclose(one["w"], 0.1 * bound, rtol=1e-8)
    np.testing.assert_allclose(two["w"], 1.8 * 0.1 * bound, rtol=1e-8)


def test_differences_that_matter_only_together_are_both_relevant():
    """Adam from x near its minimum, torch against Keras: eps placement and Keras' default eps of 1e-7 move the
    result a little each, and ten times more together."""
    hyper, start = {"lr": 0.1}, {"x": np.array([0.998046875])}
    torch_hyper, keras_hyper = (
        optimizers.hyperparameters("adam", f, DECLARED[f], hyper) for f in ("torch", "tensorflow")
    )
    torch_switches, keras_switches = DECLARED["torch"].switches, DECLARED["tensorflow"].switches

    def trajectory_of(hyperparameters, switches):
        gradient_at = lambda params: {"x": 2 * (params["x"] - 1)}  # noqa: E731
        return update_properties.reference_trajectory("adam", hyperparameters, switches, start, gradient_at, 2)

    differences = optimizers.explain("adam", torch_switches, keras_switches, torch_hyper) + optimizers.explain_defaults(
        "adam", "torch", DECLARED["torch"], "tensorflow", DECLARED["tensorflow"], hyper
    )
    gap = trajectory_of(torch_hyper, torch_switches)["x"] - trajectory_of(keras_hyper, keras_switches)["x"]
    bound = {"x": np.abs(gap) * 0.8}  # the gap exceeds the bound, no single flip does
    relevant = update_properties.relevant_differences(
        differences, "adam", torch_hyper, keras_hyper, torch_switches, keras_switches, trajectory_of, bound
    )
    assert {d.switch for d in relevant} == {"adam_eps", "eps"}


@pytest.mark.parametrize("steps", [1, 3])
def test_no_drift_without_rounding(steps):
    exact = lambda params: (quadratic(params), {"w": np.zeros(2)})  # noqa: E731
    drift = update_properties.gradient_rounding_drift(
        "sgd", SGD, DECLARED["torch"].switches, {"w": np.ones(2)}, exact, steps
    )
    assert np.all(drift["w"] == 0)


@pytest.mark.parametrize(
    ("value", "dtype", "underflows"),
    [
        (1e-200, "float64", True),
        (1e-150, "float64", False),
        (1e-20, "float32", True),
        (1e-18, "float32", False),
        (0.0, "float32", False),  # exact zeros square to zero exactly: nothing is flushed
    ],
)
def test_steps_with_subnormal_intermediates_are_recognised(value, dtype, underflows):
    """A parameter (or gradient) whose square is subnormal: weight_decay * p, g * g may be flushed to zero."""
    values = [{"w": np.array([value, 1.0], dtype)}, {"w": np.array([value, 0.9], dtype)}]
    assert update_properties.near_underflow(values, [{"w": np.array([1.0, 1.0], dtype)}], [], dtype) is underflows
    assert update_properties.near_underflow(values[1:], [{"w": np.array([value, 1.0], dtype)}], [], dtype) is underflows


@pytest.mark.parametrize(
    ("value", "dtype", "underflows"),
    [
        (1e-39, "float32", True),
        (1e-37, "float32", False),
        (1e-309, "float64", True),
        (1e-307, "float64", False),
        (0.0, "float64", False),
    ],
)
def test_a_subnormal_optimizer_state_is_recognised(value, dtype, underflows):
    """(1 - beta2) g^2 below the smallest normal number, though g^2 is not: a subnormal second moment."""
    state = {"step": {"w": np.asarray(1)}, "exp_avg_sq": {"w": np.array([value, 1.0])}}
    values = [{"w": np.array([1.0, 1.0], dtype)}]
    assert update_properties.near_underflow(values, [{"w": np.array([1.0, 1.0])}], [state], dtype) is underflows


def _accumulated(mean: np.ndarray, held_in: str | None) -> AccumulationRun:
    parts = [{"w": np.array([0.1, -3.0])}, {"w": np.array([0.1 + 1e-12, 2.0])}]
    return AccumulationRun("a mechanism", "mean", parts, {"w": mean}, "https://example.org", accumulator_dtype=held_in)


@pytest.mark.parametrize("held_in", [None, "float64"])
def test_a_float32_mean_in_a_float64_run_fails_without_a_narrower_accumulator(held_in):
    exact = (np.array([0.1, -3.0]) + np.array([0.1 + 1e-12, 2.0])) / 2
    comparison, explanations = update_properties.native_accumulation(
        _accumulated(exact.astype(np.float32), held_in), "float64"
    )
    assert not comparison.ok and explanations == [
        "a mechanism averages the micro-batch gradients; torch's .grad accumulation sums them"
    ]


def test_a_documented_narrower_accumulator_explains_only_its_own_precision():
    """optax.MultiSteps' float32 accumulator in a float64 run: the float32 mean is explained, an error beyond
    float32's rounding (1e-5 relative) is not."""
    exact = (np.array([0.1, -3.0]) + np.array([0.1 + 1e-12, 2.0])) / 2
    rounded, explanations = update_properties.native_accumulation(
        _accumulated(exact.astype(np.float32), "float32"), "float64"
    )
    assert rounded.ok and "holds its accumulator in float32 in a float64 run" in explanations[-1]
    wrong, _ = update_properties.native_accumulation(_accumulated(exact * (1 + 1e-5), "float32"), "float64")
    assert not wrong.ok


@pytest.mark.parametrize("beta2", [0.999, 0.9999])
def test_a_tenth_of_a_percent_step_error_is_outside_the_float32_step_bound(beta2):
    """Adam at the end of adam-hyperparameters' range, 6 steps, decay rates cast to float32 (Keras, optax): the
    step bound, relative to the step, stays below 1e-3 (the conditioning of 1 - beta2^t is not carried)."""
    hyper = {"beta1": 0.9, "beta2": beta2}
    relative = update_properties.step_roundings(hyper, steps=6) * update_properties.unit_roundoff("float32")
    assert relative < 1e-3 / 1.5
    assert update_properties.step_roundings(hyper, 6, decay_rates_in_dtype=False) == 16 * 6


def test_keras_momentum_step_bound_covers_its_terms_when_they_cancel():
    """Keras' Nesterov step mu m - lr g, with m = mu m - lr g: the second gradient is chosen so that the step is
    zero while both terms are about 0.043. The bound is on the terms' magnitudes (the buffer's included), not on
    the step's."""
    hyper = optimizers.hyperparameters("nesterov", "tensorflow", DECLARED["tensorflow"], {"lr": 0.1, "momentum": 0.9})
    lr, mu = 0.1, float(np.float32(0.9))  # Keras casts the momentum to float32
    g1, g2 = 1.0, -0.081 / 0.19
    m1 = -lr * g1
    p1 = 1.0 + mu * m1 - lr * g1
    m2 = mu * m1 - lr * g2
    p2 = p1 + mu * m2 - lr * g2
    run = UpdateRun(
        values=[{"w": np.array(1.0)}, {"w": np.array(p1)}, {"w": np.array(p2)}],
        gradients=[{"w": np.array(g1)}, {"w": np.array(g2)}],
        state={},
    )
    _, bounds, *_ = update_properties.step_by_step("nesterov", hyper, DECLARED["tensorflow"].switches, run, "float32")
    terms = mu * abs(mu * m1) + mu * lr * abs(g2) + lr * abs(g2)  # mu |m2| + lr |g2|, m2's own terms apart
    assert abs(p2 - p1) < 1e-4 * terms
    assert (
        bounds[1]["w"]
        >= update_properties.step_roundings(hyper, 2) * update_properties.unit_roundoff("float32") * terms
    )


def test_only_the_documented_multisteps_accumulator_explains():
    from conformance.backends.jax import _documented

    assert _documented("float32") == "float32" and _documented("float16") is None and _documented("bfloat16") is None


@pytest.mark.parametrize("size", [1, 3, 16, 200])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_float32_norm_clip_is_within_its_derived_roundings(framework, size):
    """The framework's own clip in float32 against the reference's in float64, on the same gradients: within the
    (n + 4) u that `clip_roundings` counts (half its doubled count), over many draws with the norm above, near and
    below the threshold; and the bound is not vacuous: the worst error seen is a sizeable share of it."""
    generator = np.random.default_rng(size)
    u, worst = update_properties.unit_roundoff("float32"), 0.0
    allowed = update_properties.clip_roundings({"clip_norm": 1.0}, size) / 2 * u
    for draw in range(200):
        grads = {"w": generator.standard_normal(size).astype(np.float32) * np.float32(10.0 ** generator.uniform(-3, 3))}
        norm = float(np.linalg.norm(grads["w"].astype(np.float64)))
        threshold = float(np.float32(norm * (0.5, 1.0, 1 - 1e-7, 2.0)[draw % 4]))
        expected = optimizers.clipped(grads, {"clip_norm": threshold}, DECLARED[framework].switches)["w"]
        if framework == "torch":
            torch = pytest.importorskip("torch")
            parameter = torch.zeros(size, requires_grad=True)
            parameter.grad = torch.tensor(grads["w"])
            torch.nn.utils.clip_grad_norm_([parameter], threshold)
            actual = parameter.grad.numpy().astype(np.float64)
        else:
            pytest.importorskip("jax")
            optax = pytest.importorskip("optax")
            clip = optax.clip_by_global_norm(threshold)
            actual = np.asarray(clip.update(grads, clip.init(grads))[0]["w"], np.float64)
        relative = np.max(np.abs(actual - expected) / np.abs(expected))
        assert relative <= allowed, (draw, relative / u)
        worst = max(worst, relative)
    if size > 1:  # one element is clipped to sign * threshold, exactly in optax
        assert worst > allowed / (4 * size + 16)  # at least a few roundings of the count are real


def test_radam_rho_error_covers_a_float32_rho():
    """rho_t computed as optax's scale_by_radam computes it in a float32 run (b2 ** count of an int32 count, so b2
    rounded to float32; rho_inf a Python float) lies within `_rho_error` of that rho_t computed exactly
    (`rho_with_power_in`), for beta2 from 0.7 to 0.99999 and t up to 200; and the bound is not vacuous: the worst
    error is a sizeable share of it. The float32 power alone moves rho_t far: from 2.0 to 5.3 at t = 2 for beta2 =
    0.9999."""
    jnp = pytest.importorskip("jax.numpy")
    u, worst = update_properties.unit_roundoff("float32"), 0.0
    for beta2 in (0.7, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999):
        ro_inf, rounded = 2.0 / (1.0 - beta2) - 1.0, float(np.float32(beta2))
        for t in range(1, 201):
            count = jnp.asarray(t, jnp.int32)
            b2t = beta2**count
            computed = float(ro_inf - 2 * count * b2t / (1 - b2t))
            error = abs(computed - optimizers.rho_with_power_in(beta2, t, "float32"))
            bound = optimizers._rho_error(rounded, t, u)
            assert error <= bound, (beta2, t, error, bound)
            worst = max(worst, error / bound)
    assert worst > 0.1
    assert optimizers.radam_rho(0.9999, 2) == pytest.approx(2.0, abs=1e-3)
    assert optimizers.rho_with_power_in(0.9999, 2, "float32") == pytest.approx(5.318, abs=1e-3)


def _radam_run(gradients: list[float], lr: float = 0.01) -> UpdateRun:
    """A float64 run of torch's RAdam formulas on a scalar, from given gradients."""
    hyper = optimizers.hyperparameters("radam", "torch", DECLARED["torch"], {"lr": lr})
    params = {"w": np.array(1.0)}
    state, values = optimizers.init("radam", hyper, DECLARED["torch"].switches, params), [params]
    for g in gradients:
        params, state = optimizers.step("radam", hyper, DECLARED["torch"].switches, params, {"w": np.array(g)}, state)
        values.append(params)
    return hyper, UpdateRun(values=values, gradients=[{"w": np.array(g)} for g in gradients], state={})


def test_radam_step_near_the_threshold_allows_either_branch_only_where_rho_is_uncertain():
    """At beta2 = 0.999, rho_5 = 4.996: with rho_t in float32 (optax) step 5 may take either branch, so its bound
    holds both; with rho_t in Python floats (torch) it does not, and neither does step 6 (rho_6 = 5.994)."""
    hyper, run = _radam_run([1.0, -0.5, 0.8, 0.3, -0.2, 0.6])
    switches = DECLARED["torch"].switches
    rho_5 = optimizers.radam_rho(0.999, 5)
    assert 4.99 < rho_5 < 5
    state = optimizers.init("radam", hyper, switches, run.values[0])
    for k in range(4):
        _, state = optimizers.step("radam", hyper, switches, run.values[k], run.gradients[k], state, iteration=k)
    moments = {slot: dict(by_name) for slot, by_name in state.items()}
    _, after = optimizers.step("radam", hyper, switches, run.values[4], run.gradients[4], moments, iteration=4)
    slots = {slot: by_name["w"] for slot, by_name in after.items()}
    at_threshold, plain = (optimizers._radam_direction(hyper, switches, slots, rho) for rho in (5.0001, 4.0))
    branches = abs(0.01 * (at_threshold - plain))
    _, in_dtype, *_ = update_properties.step_by_step("radam", hyper, switches, run, "float32", True)
    _, in_python, *_ = update_properties.step_by_step("radam", hyper, switches, run, "float32", False)
    assert in_dtype[4]["w"] >= branches > 1e-3
    assert in_python[4]["w"] < 1e-3 * branches  # float32 roundings of the step alone
    assert in_dtype[5]["w"] < 0.1 * 0.01  # step 6: r_t's spread only, a few percent of the step


def test_lion_sign_near_zero_allows_either_sign():
    """Lion's step is lr sign(beta1 m + (1 - beta1) g): exact, but where that sum is within its rounding of 0 the
    sign may come out either way, and the bound is then 2 lr."""
    hyper = optimizers.hyperparameters("lion", "tensorflow", DECLARED["tensorflow"], {"lr": 0.01})
    switches = DECLARED["tensorflow"].switches
    beta1 = float(np.float32(0.9))  # as Keras casts it
    m1 = (1 - float(np.float32(0.99))) * 1.0  # the momentum after a first gradient of 1
    cancelling = -beta1 * m1 / (1 - beta1)  # the second gradient that brings the sum to 0
    for g2, near in ((cancelling, True), (cancelling * (1 + 1e-3), False)):
        gradients = [{"w": np.array(1.0)}, {"w": np.array(g2)}]
        values = [{"w": np.array(1.0)}, {"w": np.array(0.99)}, {"w": np.array(0.99)}]
        _, bounds, *_ = update_properties.step_by_step(
            "lion", hyper, switches, UpdateRun(values, gradients, state={}), "float32"
        )
        assert (bounds[1]["w"] >= 2 * 0.01) == near, (g2, bounds[1]["w"])
        assert bounds[0]["w"] < 1e-5
