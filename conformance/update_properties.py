"""Properties of optimizer updates and gradient accumulation, on plain numpy results; no framework code here.

Bounds. One step of every rule here is at most `STEP_ROUNDINGS` roundings along its longest path (Adam with amsgrad and
weight decay: about 12), so a step computed in the dtype differs from the float64 reference step from the same
parameters, gradient and state by at most u (|p_k| + |p_k+1|) + (STEP_ROUNDINGS (k + 1) + c) u |update_k|abs (u (2 |p_k|
+ |p_k+1|) with decoupled weight decay, whose factor 1 - lr wd is rounded to the dtype), where |update|abs is the larger
of the step itself and the step the reference takes on absolute values (|g|, |p|, |state|: "the same expression on
absolute values", which bounds the intermediate magnitudes of rules that only add; Keras' m = mu m - lr g is taken there
as mu m + lr g, whose terms have the same magnitudes and do not cancel) and the factor (k + 1) covers the state's own
rounding carried from the k earlier steps. c is the conditioning of Adam's bias corrections, for a framework that casts
beta1 and beta2 to the dtype and computes 1 - b^t there (Keras, optax; torch keeps Python floats): b's rounding and
pow's (within an ulp) give 1 - b^t a relative error of at most 2 u b / (1 - b) at any step t (t b^t / (1 - b^t) <= b /
(1 - b)), not accumulated; the step divides by 1 - beta1^t and by sqrt(1 - beta2^t), so c = 2 beta1 / (1 - beta1) +
beta2 / (1 - beta2) (10,018 u for beta2 = 0.9999). The moments' own 1 - b is a Python float everywhere (double
precision), and RMSprop has no bias correction. A trajectory compared with another backend's carries each step's error
through at most `steps` later steps: the agreement tolerance is the sum of both backends' step bounds, times the number
of steps. The two backends' gradients also differ by their own rounding: where the steps alone do not cover a gap, the
bound adds, for each backend, how far the reference trajectory moves when every gradient is off by its rounding bound
(`gradient_rounding_drift`). Where the dynamics amplify the gradients' own rounding further (Adam near a zero gradient
divides by sqrt(v)), two backends still agree when each matches its reference step by step and the references with both
backends' formulas agree. A norm clip adds its own roundings to every step's count (`clip_roundings`); a learning-rate
schedule adds how far the step on absolute values moves when every step's learning rate is off by the schedule's own
rounding (`learning_rate_error`), its state carried. Where a rule branches on a computed value (Lion's sign of a
sum near 0, RAdam's threshold on rho_t) or amplifies a scalar's rounding (RAdam's r_t of a cancelling rho_t), each
step adds what `optimizers.branch_allowance` allows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from conformance import tolerance
from conformance.backends.base import AccumulationRun, UpdateRun, micro_batches
from conformance.cases import Case
from conformance.expressions import names_used
from conformance.reference import optimizers, schedules
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import ReferenceGradient, exact_gradient
from conformance.tolerance import Comparison, compare, identical, worst

STEP_ROUNDINGS = 16


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(dtype).eps) / 2 + float(np.finfo(np.float64).eps) / 2


def _absolute(values: dict) -> dict:
    return {name: None if value is None else np.abs(np.asarray(value, np.float64)) for name, value in values.items()}


def step_roundings(hyper: dict, steps: int, decay_rates_in_dtype: bool = True, elements: int = 0) -> float:
    """Roundings of the (steps)-th step, the state's carried roundings, the bias corrections' conditioning and a
    norm clip's over `elements` gradient elements included (see the module's docstring and `clip_roundings`)."""
    conditioning = 0.0
    if decay_rates_in_dtype and "beta1" in hyper and "beta2" in hyper:
        beta1, beta2 = float(hyper["beta1"]), float(hyper["beta2"])
        conditioning = 2 * (beta1 / (1 - beta1) if beta1 < 1 else 0.0) + (beta2 / (1 - beta2) if beta2 < 1 else 0.0)
    return STEP_ROUNDINGS * steps + conditioning + clip_roundings(hyper, elements)


def clip_roundings(hyper: dict, elements: int) -> float:
    """A norm clip scales every gradient by clip_norm / norm computed in the dtype: the sum of n squares is within
    n u of its value, its root within (n + 1) / 2 u, and the 1e-6 torch adds, the division and the product add
    three more, so every clipped gradient is off by at most (n + 4) u relative, the same factor for all (a clip
    just at the threshold, taken by one side and not by the other, moves by no more). A step that divides by a
    root of the squared gradients' average (Adam, RMSprop, Adagrad) doubles it. The factor applies to the state's
    terms alike, so it does not grow with the steps. A value clip is exact."""
    if "clip_norm" not in hyper and "clip_norm_per_variable" not in hyper:
        return 0.0
    return 2.0 * (elements + 4)


def _without_cancellation(switches):
    """The same rule with a momentum buffer that holds lr * g with its sign flipped (Keras' m = mu m - lr g becomes
    mu m + lr g): the same magnitudes, so that on absolute values every term adds and none cancels."""
    return dataclasses.replace(
        switches,
        sgd_momentum="step" if switches.sgd_momentum == "update" else switches.sgd_momentum,
        rmsprop_momentum="step" if switches.rmsprop_momentum == "update" else switches.rmsprop_momentum,
    )


def step_by_step(rule: str, hyper: dict, switches, run: UpdateRun, dtype: str, decay_rates_in_dtype: bool = True):
    """The reference driven by the backend: from each of its parameter values and gradients, one reference step.

    Returns the reference's values after each step, their bounds, and the reference's final state."""
    u = unit_roundoff(dtype)
    magnitude_switches = _without_cancellation(switches)
    state = optimizers.init(rule, hyper, switches, run.values[0])
    absolute_state = optimizers.init(rule, hyper, switches, run.values[0])
    # decoupled weight decay scales p by 1 - lr * weight_decay first: that factor, rounded to the dtype, and the
    # product are two roundings at p's magnitude before the step's last one
    p_roundings = (
        3
        if (optimizers.base_rule(rule) in optimizers.DECOUPLED or switches.weight_decay == "decoupled")
        and hyper.get("weight_decay")
        else 2
    )
    expected, bounds = [], []
    elements = sum(np.size(value) for value in run.values[0].values())
    schedule_u = schedule_unit_roundoff(hyper, switches, dtype)
    offset_state = absolute_state  # the absolute run with each step's learning rate raised by its schedule's error
    scalars_dtype = dtype if decay_rates_in_dtype else "float64"
    for k, (values, gradients) in enumerate(zip(run.values, run.gradients, strict=False)):
        carried = {  # how far the framework's state may lie from the reference's after k steps (matches_reference)
            slot: {
                name: step_roundings(hyper, k, decay_rates_in_dtype, elements)
                * u
                * np.maximum(np.abs(absolute_state[slot][name]), np.abs(value))
                for name, value in by_name.items()
            }
            for slot, by_name in state.items()
            if slot != "step"
        }
        branches = optimizers.branch_allowance(
            rule, hyper, switches, values, gradients, state, k, u, carried, scalars_dtype
        )
        following, state = optimizers.step(rule, hyper, switches, values, gradients, state, iteration=k)
        magnitudes = _absolute(values)
        absolute_following, absolute_state = _absolute_step(
            rule, hyper, magnitude_switches, values, gradients, absolute_state, k
        )
        offset_following, offset_state = _absolute_step(
            rule,
            hyper,
            magnitude_switches,
            values,
            gradients,
            offset_state,
            k,
            learning_rate_error(hyper, k, schedule_u),
        )
        expected.append(following)
        bounds.append(
            {
                name: u * ((p_roundings - 1) * magnitudes[name] + np.abs(following[name]))
                + step_roundings(hyper, k + 1, decay_rates_in_dtype, elements)
                * u
                * np.maximum(
                    np.abs(magnitudes[name] - absolute_following[name]), np.abs(values[name] - following[name])
                )
                + np.abs(offset_following[name] - absolute_following[name])
                + branches[name]
                + float(np.finfo(dtype).smallest_normal)
                for name in values
            }
        )
    schedule_drift = {
        slot: {name: np.abs(offset_state[slot][name] - value) for name, value in by_name.items()}
        for slot, by_name in absolute_state.items()
    }
    return expected, bounds, state, absolute_state, schedule_drift


def _absolute_step(rule, hyper, switches, values, gradients, carried, iteration, lr_offset=0.0):
    """The reference step on absolute values (see the module's docstring), its state carried on absolute values."""
    absolute = {slot: _absolute(v) for slot, v in carried.items()}
    return optimizers.step(
        rule, hyper, switches, _absolute(values), _absolute(gradients), absolute, iteration, lr_offset
    )


def schedule_unit_roundoff(hyper: dict, switches, dtype: str) -> float:
    """The precision a framework computes the case's schedule in: float32 where its `schedule_precision` says so,
    double precision where it computes schedules in Python floats (torch: the lr's rounding into the dtype is one
    of the step's own), else the run's dtype."""
    schedule = hyper.get("schedule")
    if schedule is not None and schedules.in_float32(schedule, switches.schedule_precision):
        return max(unit_roundoff(dtype), unit_roundoff("float32"))
    return unit_roundoff("float64") if switches.schedule_precision == "float64" else unit_roundoff(dtype)


def learning_rate_error(hyper: dict, iteration: int, u: float) -> float:
    """How far a framework's scheduled learning rate may lie from the reference's (schedules.learning_rate_error);
    0 without a schedule, where the lr is a constant whose rounding the step's own roundings count."""
    schedule = hyper.get("schedule")
    return 0.0 if schedule is None else schedules.learning_rate_error(schedule, float(hyper["lr"]), iteration, u)


def matches_reference(
    rule: str, hyper: dict, switches, run: UpdateRun, dtype: str, decay_rates_in_dtype: bool = True
) -> tuple[Comparison, dict]:
    """Each step, and the final optimizer state where the framework exposes it, against the reference."""
    expected, bounds, state, absolute_state, schedule_drift = step_by_step(
        rule, hyper, switches, run, dtype, decay_rates_in_dtype
    )
    comparisons = [
        step_relative(
            compare(f"step {k + 1}: {name}", run.values[k + 1][name], expected[k][name], bounds[k][name]),
            run.values[k][name],
            expected[k][name],
            bounds[k][name],
        )
        for k in range(len(expected))
        for name in expected[k]
    ]
    steps, u = len(expected), unit_roundoff(dtype)
    roundings = step_roundings(hyper, steps, decay_rates_in_dtype, sum(np.size(v) for v in run.values[0].values()))
    for slot, values in run.state.items():
        for name, value in values.items():
            if slot in state and name in state[slot]:
                magnitude = np.maximum(np.abs(absolute_state[slot][name]), np.abs(state[slot][name]))
                bound = 0.0 if slot == "step" else roundings * u * magnitude + schedule_drift[slot][name]
                comparisons.append(compare(f"state {slot} of {name}", value, state[slot][name], bound))
    return worst(comparisons), {"expected": expected, "bounds": bounds}


def step_relative(comparison: Comparison, before, after, bound) -> Comparison:
    """A comparison of parameters after a step, sensitive as a relative error in the step itself would show."""
    step = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    return dataclasses.replace(comparison, sensitivity=tolerance.sensitivity(step, bound))


def trajectory(run: UpdateRun, expected: list[dict]) -> dict[str, list[float]]:
    """The first element of the first variable over the steps, for the report's plot."""
    name = next(iter(run.values[0]))
    actual = [float(np.ravel(values[name])[0]) for values in run.values]
    reference = [actual[0]] + [float(np.ravel(values[name])[0]) for values in expected]
    return {
        "steps": list(range(len(actual))),
        "actual": actual,
        "reference": reference,
        "error": [abs(a - r) for a, r in zip(actual, reference, strict=True)],
    }


def near_underflow(values: list[dict], gradients: list[dict], states: list[dict], dtype: str) -> bool:
    """Whether a trajectory comes near underflow: some nonzero gradient or parameter element has a square below the
    dtype's smallest normal number, or some nonzero element of the optimizer's state (a moment, (1 - beta2) g^2)
    is below it (each with a factor 2 of margin). Then a step's intermediates (g * g, weight_decay * p, Keras'
    m * alpha) or its state may be subnormal, which XLA on CPU and TensorFlow with oneDNN flush to zero and
    which elsewhere keep fewer significant bits, and a flushed intermediate divided by eps moves a step far more
    than a rounding would. Asked of the reference's trajectory, never of a backend's output, so that a backend
    emitting tiny garbage fails instead of being filtered out."""
    smallest = float(np.finfo(dtype).smallest_normal)
    arrays = [g for step in gradients for g in step.values() if g is not None]
    arrays += [value for step in values for value in step.values()]
    slots = [
        np.asarray(value)
        for state in states
        for slot, by_name in state.items()
        if slot != "step"
        for value in by_name.values()
    ]
    return any(np.any((array != 0) & (np.abs(array) < 2 * np.sqrt(smallest))) for array in arrays) or any(
        np.any((slot != 0) & (np.abs(slot) < 2 * smallest)) for slot in slots
    )


def path_near_underflow(rule: str, hyper: dict, switches, start: dict, reference_at: Callable, steps: int, dtype: str):
    """Whether the reference's own trajectory from `start` comes near underflow (see near_underflow): a filter on
    the inputs and the reference, never on a framework's output."""
    values, gradients, states = reference_path(rule, hyper, switches, start, reference_at, steps)
    return near_underflow(values, gradients, states, dtype)


def summed_reference(case: Case, inputs: dict, dtype: str) -> Callable:
    """`reference_for(switches, conventions)`: a function of the parameters giving the exact gradient summed over the
    case's micro-batches (the explicit accumulator) and the bound on its rounding in `dtype`, the micro-batch sum's
    own rounding included; None for a variable the loss does not use where the framework gives no gradient (torch,
    Keras), zeros where it gives zeros (jax.grad), as the optimizer then sees it."""
    unused = set(case.variable_names) - names_used(case.loss)
    u = unit_roundoff(dtype)
    # the same parameters recur within one example (every trajectory from the start, each side's health and its
    # comparisons): the exact sums at them are computed once
    known: dict[tuple, tuple[dict, dict]] = {}

    def summed(params: dict, conventions) -> tuple[dict, dict]:
        key = (
            conventions.values(),
            *((name, np.asarray(params[name], np.float64).tobytes()) for name in sorted(params)),
        )
        if key not in known:
            batches = micro_batches(case, {**inputs, **params})
            references = [exact_gradient(case, batch, conventions, dtype) for batch in batches]
            gradients = {name: sum(r.gradients[name] for r in references) for name in references[0].gradients}
            bounds = {
                name: sum(r.bounds[name] for r in references)
                + (len(references) - 1) * u * sum(np.abs(r.gradients[name]) for r in references)
                for name in references[0].bounds
            }
            known[key] = gradients, bounds
        return known[key]

    def reference_for(switches, conventions):
        missing = set() if switches.no_gradient == "zero" else unused

        def at(params: dict) -> tuple[dict, dict]:
            gradients, bounds = summed(params, conventions)
            return {name: None if name in missing else gradient for name, gradient in gradients.items()}, dict(bounds)

        return at

    return reference_for


def fed_gradients_match(run: UpdateRun, reference_at: Callable, dtype: str) -> Comparison:
    """The gradients the backend fed its optimizer at each step (summed over the micro-batches, as applied) against
    the reference gradient at the backend's own parameters of that step, within the reference's bound. A variable
    the loss does not use has no gradient (None) where the framework documents none (torch, Keras) and zeros where
    it documents zeros (jax.grad), as `reference_at` says: the other is a failure, since optimizers treat the two
    differently (torch's AdamW decays a variable with a zero gradient, and skips one without)."""
    comparisons = []
    for k, (values, gradients) in enumerate(zip(run.values, run.gradients, strict=False)):
        expected, bounds = reference_at(values)
        for name, gradient in gradients.items():
            where = f"step {k + 1}: grad {name} fed to the optimizer"
            if (gradient is None) != (expected[name] is None):
                comparisons.append(
                    Comparison(
                        False,
                        float("inf"),
                        0.0,
                        where,
                        f"{'no gradient' if gradient is None else 'a gradient'} "
                        f"where the framework documents {'none' if expected[name] is None else 'one'}",
                        failing_relative_error=float("inf"),
                    )
                )
            elif gradient is not None:
                comparisons.append(compare(where, gradient, expected[name], bounds[name]))
    return worst(comparisons)


def starts_at(run: UpdateRun, start: dict) -> Comparison:
    """The trajectory starts from the drawn inputs, exactly (they are values of the dtype)."""
    return worst(
        [
            identical(f"{name} before the first step", np.asarray(start[name], np.asarray(value).dtype), value)
            for name, value in run.values[0].items()
        ]
    )


def reference_path(rule: str, hyper: dict, switches, start: dict, reference_at: Callable, steps: int):
    """The float64 trajectory with exact gradients: the parameters before each step and after the last, the
    gradients each step applies, and the optimizer's state after each step."""
    params, state = (
        {n: np.asarray(v, np.float64) for n, v in start.items()},
        optimizers.init(rule, hyper, switches, start),
    )
    values, gradients, states = [params], [], []
    for k in range(steps):
        gradients.append(reference_at(params)[0])
        params, state = optimizers.step(rule, hyper, switches, params, gradients[-1], state, iteration=k)
        values.append(params)
        states.append(state)
    return values, gradients, states


def agreement_bound(bounds: list[dict], other_bounds: list[dict]) -> dict[str, np.ndarray]:
    steps = len(bounds)
    return {
        name: steps * sum(b[name] + o[name] for b, o in zip(bounds, other_bounds, strict=True)) for name in bounds[0]
    }


def reference_trajectory(rule: str, hyper: dict, switches, start: dict, gradient_at, steps: int) -> dict:
    """The float64 trajectory's end with exact gradients (`gradient_at(params)`): what the framework's formulas give."""
    return reference_path(rule, hyper, switches, start, lambda params: (gradient_at(params), None), steps)[0][-1]


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


def relevant_differences(
    differences: list, rule: str, hyper: dict, other_hyper: dict, switches, other_switches, trajectory_of, bound: dict
) -> list:
    """The switches and defaults that matter: flipped alone to the other framework's value, or flipped back alone
    from the other framework's whole set, each moves the reference's result by more than bound / n, for n
    differences. Flipping back catches those that matter only together: Keras' eps placement and its larger
    default eps each move Adam's step a little, and both at once ten times more."""

    def flipped(chosen: list) -> dict:
        changed = {d.switch: getattr(other_switches, d.switch) for d in chosen if not d.default}
        return trajectory_of(
            {**hyper, **{d.switch: other_hyper[d.switch] for d in chosen if d.default}},
            dataclasses.replace(switches, **changed),
        )

    share = max(1, len(differences))
    mine, theirs = trajectory_of(hyper, switches), flipped(differences)

    def moves(trajectory: dict, reference: dict) -> bool:
        return any(np.any(np.abs(trajectory[name] - reference[name]) > bound[name] / share) for name in reference)

    return [
        d
        for d in differences
        if moves(flipped([d]), mine) or moves(flipped([o for o in differences if o is not d]), theirs)
    ]


@dataclass(frozen=True)
class Side:
    """One backend's run of an update case, with what the reference needs to judge it."""

    name: str
    hyper: dict  # the complete hyperparameters: the case's and this framework's defaults
    declared: optimizers.OptimizerDeclaration  # the backend's switches and defaults
    conventions: object  # the backend's KinkConventions
    run: UpdateRun
    decay_rates_in_dtype: bool = True  # see step_roundings

    @property
    def switches(self) -> optimizers.UpdateSwitches:
        return self.declared.switches


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "pass", "divergent" or "fail"
    comparison: Comparison
    explanation: str | None = None
    citation: str | None = None


def health(rule: str, side: Side, reference_at: Callable, start: dict, dtype: str) -> tuple[Comparison, dict]:
    """The trajectory's start against the drawn inputs, each step against the reference from the backend's own
    parameters and gradients, and those gradients against the exact ones: a backend is healthy on this run only
    when all three hold."""
    steps, reference = matches_reference(rule, side.hyper, side.switches, side.run, dtype, side.decay_rates_in_dtype)
    return worst([starts_at(side.run, start), steps, fed_gradients_match(side.run, reference_at, dtype)]), reference


def agreement(
    rule: str, given: dict, mine: Side, theirs: Side, start: dict, reference_for: Callable, dtype: str
) -> Verdict:
    """Whether two backends' trajectories agree: `pass` within the bound (the steps' rounding, then the gradients'
    rounding carried through the trajectory), or where both follow the same formulas step by step and only the
    dynamics amplify rounding; `divergent` only when both backends are healthy (steps and fed gradients) and the
    reference with each one's formulas and defaults reproduces the gap; `fail` otherwise.
    `reference_for(switches, conventions)` gives the exact summed gradients and bounds at given parameters."""
    steps = len(mine.run.gradients)
    own, own_reference = health(rule, mine, reference_for(mine.switches, mine.conventions), start, dtype)
    their, their_reference = health(rule, theirs, reference_for(theirs.switches, theirs.conventions), start, dtype)
    final, other_final = mine.run.values[-1], theirs.run.values[-1]

    def gap_within(bound: dict) -> Comparison:
        return worst(
            [
                step_relative(
                    compare(
                        f"{name} after {steps} steps against {theirs.name}", final[name], other_final[name], bound[name]
                    ),
                    start[name],
                    other_final[name],
                    bound[name],
                )
                for name in final
            ]
        )

    bound = agreement_bound(own_reference["bounds"], their_reference["bounds"])
    gap = gap_within(bound)
    if not gap.ok:  # the steps' rounding does not cover the gap: add the gradients' rounding, carried
        drifts = [
            gradient_rounding_drift(
                rule, side.hyper, side.switches, start, reference_for(side.switches, side.conventions), steps
            )
            for side in (mine, theirs)
        ]
        bound = {name: bound[name] + drifts[0][name] + drifts[1][name] for name in bound}
        gap = gap_within(bound)
    if gap.ok:
        return Verdict("pass", gap)
    for side, healthy in ((mine, own), (theirs, their)):
        if not healthy.ok:
            return Verdict(
                "fail",
                dataclasses.replace(
                    gap,
                    detail=f"{gap.detail}; {side.name} does not follow the "
                    f"reference itself: {healthy.where}: {healthy.detail}",
                ),
            )

    def trajectory_of(hyperparameters: dict, switches, conventions=mine.conventions) -> dict:
        at = reference_for(switches, conventions)
        return reference_trajectory(rule, hyperparameters, switches, start, lambda params: at(params)[0], steps)

    reference = trajectory_of(mine.hyper, mine.switches)
    other_reference = trajectory_of(theirs.hyper, theirs.switches, theirs.conventions)
    same_formulas = worst(
        [
            compare(f"reference gap to {theirs.name} in {name}", reference[name], other_reference[name], bound[name])
            for name in reference
        ]
    )
    if same_formulas.ok:
        # Both follow the same formulas step by step; the trajectories part only through their gradients' rounding,
        # which the dynamics amplify (Adam near a zero gradient): agreement, not a difference.
        return Verdict(
            "pass",
            dataclasses.replace(
                gap, ok=True, detail="rounding amplified by the trajectory; each step matches the reference"
            ),
        )
    reproduced = worst(
        [
            compare(
                f"gap to {theirs.name} in {name}",
                np.float64(final[name]) - other_final[name],
                reference[name] - other_reference[name],
                bound[name],
            )
            for name in final
        ]
    )
    differences = relevant_differences(
        optimizers.explain(rule, mine.switches, theirs.switches, mine.hyper)
        + optimizers.explain_defaults(rule, mine.name, mine.declared, theirs.name, theirs.declared, given),
        rule,
        mine.hyper,
        theirs.hyper,
        mine.switches,
        theirs.switches,
        trajectory_of,
        bound,
    )
    if reproduced.ok and differences:
        return Verdict(
            "divergent",
            gap,
            f"{mine.name} and {theirs.name} differ by {gap.max_error:.3g} in {gap.where}, as the reference "
            f"with each one's formulas predicts: " + "; ".join(d.text for d in differences),
            "; ".join(c.url for d in differences for c in d.citations),
        )
    return Verdict("fail", gap)


def accumulation_bounds(
    run: AccumulationRun, dtype: str, held_in: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per variable, the sum (or mean, as documented) of the micro-batch gradients, and how far the mechanism's
    result may lie from it when computed in `dtype`, or in `held_in` where it holds its accumulator in that
    narrower dtype."""
    u = unit_roundoff(held_in or dtype)
    count = len(run.micro_gradients)
    expected_and_bound = {}
    for name, accumulated in run.accumulated.items():
        parts = [
            np.zeros_like(accumulated) if g.get(name) is None else np.asarray(g[name], np.float64)
            for g in run.micro_gradients
        ]
        total = np.sum(parts, axis=0)
        expected = total if run.promise == "sum" else total / count
        magnitude = np.sum(np.abs(parts), axis=0)
        if held_in:
            # each gradient is rounded into the accumulator, and a running mean (optax's a + (g - a) / (n + 1))
            # rounds three times a micro-step, its n-th term at most S / n for S = sum |g|: at most (H_k + 5) u S
            # to first order, H_k the k-th harmonic number; each of those operations may flush a result below the
            # accumulator's smallest normal number
            roundings = (sum(1.0 / n for n in range(1, count + 1)) + 5) * u * magnitude
            flushed = (3 * count + 1) * float(np.finfo(held_in).smallest_normal)
        else:  # summing k terms (k - 1 roundings) and a division for the mean
            roundings = (count + 1) * u * magnitude / (1 if run.promise == "sum" else count)
            flushed = float(np.finfo(dtype).smallest_normal)
        # a step read back adds its resolution
        expected_and_bound[name] = (expected, roundings + run.resolution.get(name, 0.0) + flushed)
    return expected_and_bound


def accumulation_matches(run: AccumulationRun, dtype: str, held_in: str | None = None) -> Comparison:
    """The native mechanism gives the sum (or mean, as documented) of the micro-batch gradients, computed in
    `dtype`, or in `held_in` where the mechanism holds its accumulator in that narrower dtype."""
    return worst(
        [
            compare(f"accumulated {name} ({run.promise})", run.accumulated[name], expected, bound)
            for name, (expected, bound) in accumulation_bounds(run, dtype, held_in).items()
        ]
    )


def narrower_accumulator(run: AccumulationRun, dtype: str) -> str | None:
    """The accumulator's dtype, where the mechanism holds its sum in less precision than the run asked for."""
    held = run.accumulator_dtype
    return held if held is not None and np.finfo(held).eps > np.finfo(dtype).eps else None


def accumulator_precision(run: AccumulationRun, dtype: str) -> str | None:
    """The narrower dtype the mechanism's result is judged in: its documented accumulator's, where the run's own
    dtype does not account for the result (the README's rule for lower precision than asked for); else None."""
    held_in = narrower_accumulator(run, dtype)
    return None if held_in is None or accumulation_matches(run, dtype).ok else held_in


def native_accumulation(run: AccumulationRun, dtype: str) -> tuple[Comparison, list[str]]:
    """The mechanism against the sum or mean it documents, and what explains its difference from torch's sum: a
    mean, and a documented narrower accumulator, which explains a gap only where its own precision accounts for
    the result."""
    held_in = accumulator_precision(run, dtype)
    explanations = (
        [f"{run.mechanism} averages the micro-batch gradients; torch's .grad accumulation sums them"]
        if run.promise == "mean"
        else []
    )
    if held_in is not None:
        explanations.append(
            f"it holds its accumulator in {held_in} in a {dtype} run, so the {run.promise} is exact "
            f"to {held_in} precision only"
        )
    return accumulation_matches(run, dtype, held_in), explanations


@dataclass(frozen=True)
class AccumulationSide:
    """One column's accumulation at one point: the mechanism's run, and the exact gradient of each micro-batch
    under that column's conventions."""

    name: str
    run: AccumulationRun
    references: list[ReferenceGradient]
    conventions: KinkConventions


def accumulation_health(side: AccumulationSide, dtype: str) -> Comparison:
    """Each micro-batch gradient against the exact one, and the mechanism against the sum or mean it documents."""
    micro = [
        compare(
            f"micro-batch {index} grad {name}",
            np.zeros_like(side.run.accumulated[name]) if gradients.get(name) is None else gradients[name],
            reference.gradients[name],
            reference.bounds[name],
        )
        for index, (gradients, reference) in enumerate(zip(side.run.micro_gradients, side.references, strict=True))
        for name in side.run.accumulated
    ]
    return worst([*micro, native_accumulation(side.run, dtype)[0]])


def accumulation_agreement(mine: AccumulationSide, theirs: AccumulationSide, dtype: str) -> Verdict:
    """Whether two accumulation mechanisms agree at one point: both must follow the exact micro-batch gradients and
    what they document, else `fail`; their results, taken back to the sum (a mean times k), must then agree within
    both bounds, once the exact sums' own difference (conventions at a kink) is set aside; `divergent` where they
    document different reductions (mean against sum), where one holds a documented narrower accumulator that its
    result needs, or where their conventions part the exact sums; `pass` otherwise."""
    for side in (mine, theirs):
        healthy = accumulation_health(side, dtype)
        if not healthy.ok:
            detail = f"{healthy.detail}; {side.name} does not follow its own documentation or the exact gradients"
            return Verdict("fail", dataclasses.replace(healthy, detail=detail))
    held_in = {side.name: accumulator_precision(side.run, dtype) for side in (mine, theirs)}

    def as_sum(side: AccumulationSide) -> tuple[dict, dict, dict]:
        """The result taken back to a sum, its bound (the mechanism's and the micro-batch gradients'), the exact sum."""
        scale = len(side.run.micro_gradients) if side.run.promise == "mean" else 1
        bounds = accumulation_bounds(side.run, dtype, held_in[side.name])
        return (
            {name: scale * np.asarray(value, np.float64) for name, value in side.run.accumulated.items()},
            {
                name: scale * bound + np.sum([reference.bounds[name] for reference in side.references], axis=0)
                for name, (_, bound) in bounds.items()
            },
            {
                name: np.sum([reference.gradients[name] for reference in side.references], axis=0)
                for name in side.run.accumulated
            },
        )

    (total, bound, exact), (other_total, other_bound, other_exact) = as_sum(mine), as_sum(theirs)
    exact_gap = {name: exact[name] - other_exact[name] for name in total}
    gap = worst(
        [
            compare(
                f"accumulated {name}, as a sum, against {theirs.name}",
                total[name] - exact_gap[name],
                other_total[name],
                bound[name] + other_bound[name],
            )
            for name in total
        ]
    )
    if not gap.ok:  # both sides are healthy, so this cannot happen; a verdict does not rest on that
        return Verdict("fail", gap)
    reasons, citations = [], {mine.run.citation, theirs.run.citation}
    if mine.run.promise != theirs.run.promise:
        reasons += [f"{side.run.mechanism} gives the {side.run.promise}" for side in (mine, theirs)]
    reasons += [
        f"{side.run.mechanism} holds its accumulator in {held_in[side.name]}, exact to that precision only"
        for side in (mine, theirs)
        if held_in[side.name] is not None
    ]
    if any(np.any(difference != 0) for difference in exact_gap.values()):
        reasons.append("their conventions at a kink give different exact gradients")
        citations |= {
            citation.url
            for side in (mine, theirs)
            for name, citation in side.conventions.citations.items()
            if getattr(mine.conventions, name) != getattr(theirs.conventions, name)
        }
    if not reasons:
        return Verdict("pass", gap)
    return Verdict("divergent", gap, "; ".join(reasons), "; ".join(sorted(citations)))
