"""Properties of optimizer updates and gradient accumulation, on plain numpy results; no framework code here.

Bounds. One step of every rule here is at most `STEP_ROUNDINGS` roundings along its longest path (Adam with
amsgrad and weight decay: about 12), so a step computed in the dtype differs from the float64 reference step
from the same parameters, gradient and state by at most
    u (|p_k| + |p_k+1|) + (STEP_ROUNDINGS + sum b / (1 - b)) (k + 1) u |update_k|abs,
where |update|abs is the larger of the step itself and the step the reference takes on absolute values (|g|,
|p|, |state|: "the same expression on absolute values", which bounds the intermediate magnitudes of rules that
only add; Keras' m = mu m - lr g subtracts by design, hence the larger of the two) and the factor (k + 1) covers the state's own
rounding carried from the k earlier steps. The sum runs over the decay rates b (beta1, beta2, rho) that enter
as 1 - b or 1 - b^t: a framework that holds b in float32 has 1 - b to a relative u b / (1 - b) only (999 u for
beta2 = 0.999), and the step inherits it. A trajectory compared with another backend's carries each step's
error through at most `steps` later steps: the agreement tolerance is the sum of both backends' step bounds,
times the number of steps. The two backends' gradients also differ by their own rounding: where the steps alone
do not cover a gap, the bound adds, for each backend, how far the reference trajectory moves when every gradient
is off by its rounding bound (`gradient_rounding_drift`). Where the dynamics amplify the gradients' own rounding
further (Adam near a zero gradient divides by sqrt(v)), two backends still agree when each matches its reference
step by step and the references with both backends' formulas agree.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from conformance.backends.base import AccumulationRun, UpdateRun
from conformance.reference import optimizers
from conformance.tolerance import Comparison, compare, worst

STEP_ROUNDINGS = 16


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(dtype).eps) / 2 + float(np.finfo(np.float64).eps) / 2


def _absolute(values: dict) -> dict:
    return {name: None if value is None else np.abs(np.asarray(value, np.float64)) for name, value in values.items()}


def step_roundings(hyper: dict) -> float:
    """Roundings of one step, the decay rates' conditioning included (see the module's docstring)."""
    rates = [float(hyper[name]) for name in ("beta1", "beta2", "rho") if name in hyper and 0 < float(hyper[name]) < 1]
    return STEP_ROUNDINGS + sum(rate / (1 - rate) for rate in rates)


def step_by_step(rule: str, hyper: dict, switches, run: UpdateRun, dtype: str):
    """The reference driven by the backend: from each of its parameter values and gradients, one reference step.

    Returns the reference's values after each step, their bounds, and the reference's final state."""
    u, roundings = unit_roundoff(dtype), step_roundings(hyper)
    state = optimizers.init(rule, hyper, switches, run.values[0])
    absolute_state = optimizers.init(rule, hyper, switches, run.values[0])
    expected, bounds = [], []
    for k, (values, gradients) in enumerate(zip(run.values, run.gradients)):
        following, state = optimizers.step(rule, hyper, switches, values, gradients, state)
        magnitudes = _absolute(values)
        absolute_following, absolute_state = optimizers.step(rule, hyper, switches, magnitudes, _absolute(gradients),
                                                             {slot: _absolute(v) for slot, v in absolute_state.items()})  # fmt: skip
        expected.append(following)
        bounds.append({name: u * (magnitudes[name] + np.abs(following[name]))
                       + roundings * (k + 1) * u * np.maximum(np.abs(magnitudes[name] - absolute_following[name]),
                                                               np.abs(values[name] - following[name]))
                       + float(np.finfo(dtype).smallest_normal) for name in values})  # fmt: skip
    return expected, bounds, state, absolute_state


def matches_reference(rule: str, hyper: dict, switches, run: UpdateRun, dtype: str) -> tuple[Comparison, dict]:
    """Each step, and the final optimizer state where the framework exposes it, against the reference."""
    expected, bounds, state, absolute_state = step_by_step(rule, hyper, switches, run, dtype)
    comparisons = [compare(f"step {k + 1}: {name}", run.values[k + 1][name], expected[k][name], bounds[k][name])
                   for k in range(len(expected)) for name in expected[k]]  # fmt: skip
    steps, u = len(expected), unit_roundoff(dtype)
    for slot, values in run.state.items():
        for name, value in values.items():
            if slot in state and name in state[slot]:
                magnitude = np.maximum(np.abs(absolute_state[slot][name]), np.abs(state[slot][name]))
                bound = 0.0 if slot == "step" else step_roundings(hyper) * steps * u * magnitude
                comparisons.append(compare(f"state {slot} of {name}", value, state[slot][name], bound))
    return worst(comparisons), {"expected": expected, "bounds": bounds}


def trajectory(run: UpdateRun, expected: list[dict]) -> dict[str, list[float]]:
    """The first element of the first variable over the steps, for the report's plot."""
    name = next(iter(run.values[0]))
    actual = [float(np.ravel(values[name])[0]) for values in run.values]
    reference = [actual[0]] + [float(np.ravel(values[name])[0]) for values in expected]
    return {"steps": list(range(len(actual))), "actual": actual, "reference": reference,
            "error": [abs(a - r) for a, r in zip(actual, reference)]}  # fmt: skip


def squares_underflow(run: UpdateRun, dtype: str) -> bool:
    """Whether some nonzero gradient or parameter element has a square below the dtype's smallest normal number:
    then a step's intermediates (g * g, weight_decay * p, Keras' m * alpha) may be subnormal, which XLA on CPU and
    TensorFlow with oneDNN flush to zero, and a flushed intermediate divided by eps moves a step far more than a
    rounding would."""
    limit = np.sqrt(float(np.finfo(dtype).smallest_normal))
    arrays = [g for gradients in run.gradients for g in gradients.values() if g is not None]
    arrays += [value for values in run.values for value in values.values()]
    return any(np.any((array != 0) & (np.abs(array) < limit)) for array in arrays)


def agreement_bound(bounds: list[dict], other_bounds: list[dict]) -> dict[str, np.ndarray]:
    steps = len(bounds)
    return {name: steps * sum(b[name] + o[name] for b, o in zip(bounds, other_bounds)) for name in bounds[0]}


def reference_trajectory(rule: str, hyper: dict, switches, start: dict, gradient_at, steps: int) -> dict:
    """The float64 trajectory with exact gradients (`gradient_at(params)`): what the framework's formulas give."""
    params, state = {n: np.asarray(v, np.float64) for n, v in start.items()}, optimizers.init(rule, hyper, switches, start)
    for _ in range(steps):
        params, state = optimizers.step(rule, hyper, switches, params, gradient_at(params), state)
    return params


def gradient_rounding_drift(rule: str, hyper: dict, switches, start: dict, reference_at, steps: int) -> dict:
    """How far the float64 trajectory moves when every gradient is off by its rounding bound in the dtype under
    test (`reference_at(params)` gives both: gradients, bounds), one way or the other: what two frameworks that
    follow their formulas exactly may still differ by through their gradients' rounding alone, to first order
    (for SGD, lr times the bound)."""
    exact = reference_trajectory(rule, hyper, switches, start, lambda params: reference_at(params)[0], steps)
    drift = {name: np.zeros_like(value) for name, value in exact.items()}
    for sign in (1.0, -1.0):
        def rounded(params, sign=sign):
            gradients, bounds = reference_at(params)
            return {name: None if g is None else g + sign * bounds[name] for name, g in gradients.items()}

        moved = reference_trajectory(rule, hyper, switches, start, rounded, steps)
        drift = {name: np.maximum(drift[name], np.abs(moved[name] - exact[name])) for name in exact}
    return drift


def relevant_differences(differences: list, rule: str, hyper: dict, other_hyper: dict, switches, other_switches,
                         trajectory_of, bound: dict) -> list:  # fmt: skip
    """The switches and defaults that matter: flipped alone to the other framework's value, or flipped back alone
    from the other framework's whole set, each moves the reference's result by more than bound / n, for n
    differences. Flipping back catches those that matter only together: Keras' eps placement and its larger
    default eps each move Adam's step a little, and both at once ten times more."""

    def flipped(chosen: list) -> dict:
        names = {d.switch for d in chosen}
        changed = {n: getattr(other_switches, n) for n in names if hasattr(switches, n)}
        return trajectory_of({**hyper, **{n: other_hyper[n] for n in names if not hasattr(switches, n)}},
                             dataclasses.replace(switches, **changed))  # fmt: skip

    share = max(1, len(differences))
    mine, theirs = trajectory_of(hyper, switches), flipped(differences)

    def moves(trajectory: dict, reference: dict) -> bool:
        return any(np.any(np.abs(trajectory[name] - reference[name]) > bound[name] / share) for name in reference)

    return [d for d in differences
            if moves(flipped([d]), mine) or moves(flipped([o for o in differences if o is not d]), theirs)]


def accumulation_matches(run: AccumulationRun, dtype: str) -> Comparison:
    """The native mechanism gives the sum (or mean, as documented) of the micro-batch gradients."""
    u = unit_roundoff(dtype)
    count = len(run.micro_gradients)
    comparisons = []
    for name, accumulated in run.accumulated.items():
        parts = [np.zeros_like(accumulated) if g.get(name) is None else np.asarray(g[name], np.float64)
                 for g in run.micro_gradients]  # fmt: skip
        total = np.sum(parts, axis=0)
        expected = total if run.promise == "sum" else total / count
        magnitude = np.sum(np.abs(parts), axis=0) / (1 if run.promise == "sum" else count)
        # summing k terms (k - 1 roundings) and a division for the mean; a step read back adds its resolution
        bound = ((count + 1) * u * magnitude + run.resolution.get(name, 0.0)
                 + float(np.finfo(dtype).smallest_normal))
        comparisons.append(compare(f"accumulated {name} ({run.promise})", accumulated, expected, bound))
    return worst(comparisons)
