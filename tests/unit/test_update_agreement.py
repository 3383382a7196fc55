"""The agreement decision between two backends' trajectories, on synthetic runs built from the reference itself:
a gap is `pass` only within the bound, `divergent` only when both backends follow the reference step by step with
the gradients they were fed and the reference with each one's formulas reproduces the gap, `fail` otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import backends, update_properties
from conformance.backends.base import UpdateRun
from conformance.reference import optimizers
from conformance.reference.conventions import KinkConventions

DECLARED = {name: backends.load(name).optimizers for name in ("torch", "tensorflow", "jax")}

SCALE = 1 + 1e-3
START = {"x": np.array([2.0, -0.5])}


def gradient(params: dict) -> dict:
    return {"x": 2 * (3 * params["x"] - 5) * 3 * 1e-6}  # a small scale: Keras' eps placement shows


def reference_for(switches, conventions):
    return lambda params: (gradient(params), {"x": 1e-15 * np.abs(gradient(params)["x"]) + 1e-300})


def run_of(
    rule: str,
    hyper: dict,
    switches,
    steps: int = 3,
    gradient_scale: float = 1.0,
    step_scale: float = 1.0,
    start_scale: float = 1.0,
):
    """A float64 run that follows `switches` exactly, with optionally wrong gradients, steps or start."""
    params = {name: value * start_scale for name, value in START.items()}
    state = optimizers.init(rule, hyper, switches, params)
    values, gradients = [params], []
    for _ in range(steps):
        fed = {name: g * gradient_scale for name, g in gradient(params).items()}
        following, state = optimizers.step(rule, hyper, switches, params, fed, state)
        params = {name: params[name] + step_scale * (following[name] - params[name]) for name in params}
        values.append(params)
        gradients.append(fed)
    return UpdateRun(values, gradients, state={})


def side(framework: str, rule: str, given: dict, **faults) -> update_properties.Side:
    hyper = optimizers.hyperparameters(rule, framework, DECLARED[framework], given)
    declared = DECLARED[framework]
    return update_properties.Side(
        framework, hyper, declared, KinkConventions(), run_of(rule, hyper, declared.switches, **faults)
    )


def verdict(rule: str, given: dict, mine, theirs) -> update_properties.Verdict:
    return update_properties.agreement(rule, given, mine, theirs, START, reference_for, "float64")


def test_the_same_formulas_agree():
    given = {"lr": 0.1}
    assert verdict("adam", given, side("torch", "adam", given), side("jax", "adam", given)).outcome == "pass"


def test_documented_formulas_explain_the_gap():
    given = {"lr": 0.1}
    result = verdict("adam", given, side("torch", "adam", given), side("tensorflow", "adam", given))
    assert result.outcome == "divergent", result
    assert "eps" in result.explanation and result.citation


@pytest.mark.parametrize("rule", ["adamw", "lion"])
def test_a_default_weight_decay_explains_the_gap(rule):
    """A hyperparameter that shares its name with a switch (weight_decay) is flipped as a default, not as the switch:
    AdamW's default decay is 1e-2 in torch and 1e-4 in optax, Lion's 0 in Keras and 1e-3 in optax."""
    given = {"lr": 0.1}
    other = "torch" if rule == "adamw" else "tensorflow"
    result = verdict(rule, given, side(other, rule, given), side("jax", rule, given))
    assert result.outcome == "divergent", result
    assert "default weight_decay" in result.explanation


@pytest.mark.parametrize("fault", [{"gradient_scale": SCALE}, {"step_scale": SCALE}])
@pytest.mark.parametrize("faulty", ["mine", "theirs"])
def test_a_wrong_backend_is_never_explained_nor_agreeing(fault, faulty):
    """Gradients fed 0.1% too large, or steps 0.1% too long, on either side, beside a backend whose formulas
    differ: the gap is not explained by the switches, since one side does not follow the reference."""
    given = {"lr": 0.1}
    mine = side("torch", "adam", given, **(fault if faulty == "mine" else {}))
    theirs = side("tensorflow", "adam", given, **(fault if faulty == "theirs" else {}))
    result = verdict("adam", given, mine, theirs)
    assert result.outcome == "fail", result
    assert "does not follow the reference itself" in result.comparison.detail


def test_wrong_gradients_fail_even_with_the_same_formulas():
    """The finding that started this: SGD on torch with gradients 0.1% too large beside jax was a pass."""
    given = {"lr": 0.1}
    result = verdict("sgd", given, side("torch", "sgd", given, gradient_scale=SCALE), side("jax", "sgd", given))
    assert result.outcome == "fail", result


def test_fed_gradients_are_compared_at_the_backends_own_parameters():
    hyper = optimizers.hyperparameters("sgd", "torch", DECLARED["torch"], {"lr": 0.1})
    healthy = run_of("sgd", hyper, DECLARED["torch"].switches)
    stale = UpdateRun(healthy.values, [healthy.gradients[0], *healthy.gradients[:-1]], state={})  # last step's params
    at = reference_for(None, None)
    assert update_properties.fed_gradients_match(healthy, at, "float64").ok
    assert not update_properties.fed_gradients_match(stale, at, "float64").ok


def test_a_trajectory_that_does_not_start_at_the_drawn_inputs_fails():
    """An optimizer that changes the parameters it is given (scaled by 1.001 before the first step): every step
    follows the reference from there, and the two backends share the same formulas, yet it is no agreement."""
    given = {"lr": 0.1}
    mine = side("torch", "sgd", given, start_scale=SCALE)
    assert not update_properties.starts_at(mine.run, START).ok
    assert verdict("sgd", given, mine, side("jax", "sgd", given)).outcome == "fail"


def test_a_zero_gradient_where_the_framework_documents_none_fails():
    """torch gives an unused variable no gradient (None), and AdamW then skips it; zeros would decay it."""
    hyper = optimizers.hyperparameters("sgd", "torch", DECLARED["torch"], {"lr": 0.1})
    run = run_of("sgd", hyper, DECLARED["torch"].switches)
    with_zeros = UpdateRun(run.values, [{"x": g["x"], "u": np.zeros(1)} for g in run.gradients], state={})
    without = UpdateRun(run.values, [{"x": g["x"], "u": None} for g in run.gradients], state={})

    def at(params):
        exact, bounds = reference_for(None, None)(params)
        return {**exact, "u": None}, {**bounds, "u": np.zeros(1)}

    assert update_properties.fed_gradients_match(without, at, "float64").ok
    failed = update_properties.fed_gradients_match(with_zeros, at, "float64")
    assert not failed.ok and "a gradient where the framework documents none" in failed.detail
