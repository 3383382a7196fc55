"""Optimizer updates and gradient accumulation, parametrized by the plugin over update and accumulate cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conformance import backends, strategies, update_properties
from conformance.backends.base import micro_batches
from conformance.expressions import names_used
from conformance.reference import optimizers
from conformance.tolerance import Comparison, compare, worst


def _complete(item, hyper: dict, framework: str) -> dict:
    try:
        return optimizers.hyperparameters(item.case.update.rule, framework, hyper)
    except ValueError as problem:
        pytest.skip(f"not applicable: {problem}")


def _summed_reference(item, inputs: dict, framework_conventions, missing: set[str]):
    """The exact gradient at `params`, summed over the case's micro-batches (the explicit accumulator), and the
    bound on its rounding in the dtype under test; None for the variables the framework gives no gradient (the
    loss does not use them), as the optimizer then sees it."""

    def at(params: dict) -> tuple[dict, dict]:
        references = [item.reference(batch, framework_conventions) for batch in micro_batches(item.case, {**inputs, **params})]
        gradients = {name: sum(r.gradients[name] for r in references) for name in references[0].gradients}
        bounds = {name: sum(r.bounds[name] for r in references) for name in references[0].bounds}
        return {name: None if name in missing else gradient for name, gradient in gradients.items()}, bounds

    return at


@pytest.mark.conformance("update.matches_reference", requires="update")
@given(data=st.data())
def test_update_matches_reference(conformance_item, data):
    item = conformance_item
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    complete = _complete(item, hyper, item.backend.name)
    run = item.call("updates", inputs, hyper)
    # Only where no step has subnormal intermediates, which some platforms flush to zero: see squares_underflow.
    assume(not update_properties.squares_underflow(run, item.spec.dtype))
    comparison, steps = update_properties.matches_reference(item.case.update.rule, complete,
                                                            optimizers.SWITCHES[item.backend.name], run, item.spec.dtype)  # fmt: skip
    item.trajectory = update_properties.trajectory(run, steps["expected"])
    item.check(comparison, expected=steps["expected"][-1])


@pytest.mark.conformance("update.agrees_across_backends", requires="update")
@given(data=st.data())
def test_update_agrees_across_backends(conformance_item, data):
    item, rule = conformance_item, conformance_item.case.update.rule
    others = [b for b in map(backends.load, item.other_backends) if b.unavailable_reason() is None]
    if not others:
        pytest.skip("needs a second installed backend in the run")
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    mine = item.backend.name
    complete = _complete(item, hyper, mine)
    run = item.call("updates", inputs, hyper)
    _, own = update_properties.matches_reference(rule, complete, optimizers.SWITCHES[mine], run, item.spec.dtype)
    start = {spec.name: inputs[spec.name] for spec in item.case.variables}
    unused = set(item.case.variable_names) - names_used(item.case.loss)
    for other in others:
        other_complete = _complete(item, hyper, other.name)
        other_run = item.call("updates", inputs, hyper, backend=other)
        _, theirs = update_properties.matches_reference(rule, other_complete, optimizers.SWITCHES[other.name], other_run,
                                                        item.spec.dtype)  # fmt: skip
        # Only where no step has subnormal intermediates: platforms differ in flushing them to zero (XLA, oneDNN),
        # not in formulas (see squares_underflow).
        assume(not update_properties.squares_underflow(run, item.spec.dtype)
               and not update_properties.squares_underflow(other_run, item.spec.dtype))
        bound = update_properties.agreement_bound(own["bounds"], theirs["bounds"])
        final, other_final = run.values[-1], other_run.values[-1]
        steps = item.case.update.steps

        def reference_at(switches, conventions):
            # torch and Keras see no gradient (None) for a variable the loss does not use; jax.grad gives zeros
            return _summed_reference(item, inputs, conventions, set() if switches.no_gradient == "zero" else unused)

        def trajectory_of(hyperparameters, switches, conventions=item.backend.conventions):
            at = reference_at(switches, conventions)
            return update_properties.reference_trajectory(rule, hyperparameters, switches, start,
                                                          lambda params: at(params)[0], steps)  # fmt: skip

        def agreement_within(bound):
            return worst([compare(f"{name} after {steps} steps against {other.name}", final[name], other_final[name],
                                  bound[name]) for name in final])  # fmt: skip

        agreement = agreement_within(bound)
        if not agreement.ok:  # the steps' rounding does not cover the gap: add the gradients' rounding, carried
            drifts = [update_properties.gradient_rounding_drift(rule, hyperparameters, switches, start,
                                                                reference_at(switches, conventions), steps)
                      for hyperparameters, switches, conventions in
                      ((complete, optimizers.SWITCHES[mine], item.backend.conventions),
                       (other_complete, optimizers.SWITCHES[other.name], other.conventions))]  # fmt: skip
            bound = {name: bound[name] + drifts[0][name] + drifts[1][name] for name in bound}
            agreement = agreement_within(bound)
        if agreement.ok:
            item.check(agreement)
            continue
        # Explained only when the reference, with each framework's own switches and defaults, reproduces the gap.
        reference = trajectory_of(complete, optimizers.SWITCHES[mine])
        other_reference = trajectory_of(other_complete, optimizers.SWITCHES[other.name], other.conventions)
        reproduced = worst([compare(f"gap to {other.name} in {name}", np.float64(final[name]) - other_final[name],
                                    reference[name] - other_reference[name], bound[name]) for name in final])  # fmt: skip
        differences = update_properties.relevant_differences(
            optimizers.explain(rule, optimizers.SWITCHES[mine], optimizers.SWITCHES[other.name], complete)
            + optimizers.explain_defaults(rule, mine, other.name, hyper),
            rule, complete, other_complete, optimizers.SWITCHES[mine], optimizers.SWITCHES[other.name], trajectory_of, bound)
        own_steps = update_properties.matches_reference(rule, complete, optimizers.SWITCHES[mine], run, item.spec.dtype)[0]
        their_steps = update_properties.matches_reference(rule, other_complete, optimizers.SWITCHES[other.name], other_run,
                                                          item.spec.dtype)[0]  # fmt: skip
        same_formulas = worst([compare(f"reference gap to {other.name} in {name}", reference[name], other_reference[name],
                                       bound[name]) for name in reference])  # fmt: skip
        if same_formulas.ok and own_steps.ok and their_steps.ok:
            # Both follow the same formulas step by step; the trajectories part only through their gradients'
            # rounding, which the dynamics amplify (Adam near a zero gradient): agreement, not a difference.
            item.check(Comparison(True, agreement.max_error, agreement.tolerance, agreement.where,
                                  "rounding amplified by the trajectory; each step matches the reference"))
            continue
        if reproduced.ok and differences:
            item.explain(f"{mine} and {other.name} differ by {agreement.max_error:.3g} in {agreement.where}, as the "
                         f"reference with each one's formulas predicts: " + "; ".join(d.text for d in differences),
                         "; ".join(c.url for d in differences for c in d.citations), agreement)  # fmt: skip
            continue
        item.check(agreement)


@pytest.mark.conformance("accumulation.linear", requires="accumulate")
@given(data=st.data())
def test_accumulation_linear(conformance_item, data):
    """The full-batch gradient is the sum of the micro-batch gradients (their mean for a mean-reduced loss)."""
    item = conformance_item
    inputs = item.draw_inputs(data)
    batches = micro_batches(item.case, inputs)
    full, parts = item.gradients(inputs), [item.gradients(batch) for batch in batches]
    reference = item.reference(inputs)
    reference_parts = [item.reference(batch) for batch in batches]
    comparisons = []
    for name, expected in reference.gradients.items():
        summed = np.sum([p.gradients[name] for p in reference_parts], axis=0)
        if np.allclose(expected, summed, rtol=1e-9, atol=0):
            scale = 1.0
        elif np.allclose(expected, summed / len(batches), rtol=1e-9, atol=0):
            scale = 1.0 / len(batches)
        else:
            pytest.skip("not applicable: the loss is neither a sum nor a mean over the batch")
        actual = scale * np.sum([np.asarray(p.gradients[name], np.float64) for p in parts], axis=0)
        bound = reference.bounds[name] + scale * np.sum([p.bounds[name] for p in reference_parts], axis=0)
        comparisons.append(compare(f"micro-batch {'sum' if scale == 1 else 'mean'} of grad {name}", actual,
                                   np.asarray(full.gradients[name], np.float64), bound))  # fmt: skip
    item.check(worst(comparisons))


@pytest.mark.conformance("accumulation.native", requires="accumulate")
@given(data=st.data())
def test_accumulation_native(conformance_item, data):
    """torch's .grad accumulation, Keras' gradient_accumulation_steps, optax.MultiSteps: what each documents."""
    item = conformance_item
    inputs = item.draw_inputs(data)
    run = item.call("accumulation", inputs)
    item.check(update_properties.accumulation_matches(run, item.spec.dtype))
    if run.promise == "mean":
        item.explain(f"{run.mechanism} averages the micro-batch gradients; torch's .grad accumulation sums them",
                     run.citation)


@pytest.mark.conformance("expect.goldens", requires="expect_update")
@given(data=st.data())
def test_update_goldens(conformance_item, data):
    """The case's [expect] values after its update, within the step-by-step bound of the reference."""
    item = conformance_item
    goldens = item.goldens()
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    complete = _complete(item, hyper, item.backend.name)
    run = item.call("updates", inputs, hyper)
    _, steps = update_properties.matches_reference(item.case.update.rule, complete, optimizers.SWITCHES[item.backend.name],
                                                   run, item.spec.dtype)  # fmt: skip
    unit_roundoff = float(np.finfo(item.spec.dtype).eps) / 2
    comparisons = []
    for key, golden in goldens.items():
        name = key.removeprefix("grad.")
        actual = run.gradients[0][name] if key.startswith("grad.") else run.values[-1][name]
        carried = sum(bounds[name] for bounds in steps["bounds"])
        # the golden is a decimal: allow its rounding to the dtype on top of the steps' own bounds
        comparisons.append(compare(key, actual, np.broadcast_to(golden, np.shape(actual)), carried + np.abs(golden) * unit_roundoff))
    item.check(worst(comparisons), expected=goldens)
