"""Optimizer updates and gradient accumulation, parametrized by the plugin over update and accumulate cases."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import backends, observations, strategies, update_properties
from conformance.backends.base import Backend, decay_rates_in_dtype_of, micro_batches
from conformance.property_tests import property_test
from conformance.reference import optimizers
from conformance.tolerance import compare, worst


def _require_optimizers(backend) -> None:
    """Update items of a backend that declares no native optimizers (switches and defaults) are not applicable."""
    if backend.optimizers is None:
        pytest.skip(f"not applicable: the {backend.name} backend declares no native optimizers")


def _complete(item, hyper: dict, backend) -> dict:
    """The hyperparameters `backend` runs the case's rule with; the item is not applicable where the backend
    declares no native optimizers, or has no default for a hyperparameter the case leaves out."""
    _require_optimizers(backend)
    try:
        update = item.case.update
        return optimizers.hyperparameters(update.rule, backend.name, backend.optimizers, hyper, update.schedule)
    except ValueError as problem:
        pytest.skip(f"not applicable: {problem}")


def _runs_the_rule(backend, case) -> bool:
    """Whether `backend` declares a native optimizer for the case's rule and a default for every hyperparameter
    the case leaves out: a comparison partner; one that does not is left out of the comparison, not the item."""
    if backend.optimizers is None:
        return False
    hyperparameters = case.update.hyperparameters.items()
    try:
        given = {name: spec.value if spec.range is None else spec.range[0] for name, spec in hyperparameters}
        optimizers.hyperparameters(case.update.rule, backend.name, backend.optimizers, given)
    except ValueError:
        return False
    return True


def _native_accumulation(item) -> None:
    """Accumulation items of a backend whose adapter has no accumulation mechanism are not applicable."""
    if type(item.backend).accumulation is Backend.accumulation:
        pytest.skip(f"not applicable: the {item.backend.name} backend has no native accumulation")


def _own_side(item, complete: dict, run) -> update_properties.Side:
    backend = item.backend
    return update_properties.Side(
        backend.name,
        complete,
        backend.optimizers,
        backend.conventions,
        run,
        decay_rates_in_dtype_of(backend, item.spec.device, item.spec.variant),
    )


def _health(item, side: update_properties.Side, inputs: dict, reference_for):
    """The side's steps and fed gradients against the reference from `inputs` (update_properties.health)."""
    start = {spec.name: inputs[spec.name] for spec in item.case.variables}
    reference_at = reference_for(side.switches, side.conventions)
    return update_properties.health(item.case.update.rule, side, reference_at, start, item.spec.dtype)


NEAR_UNDERFLOW = "a step's intermediates or state would be subnormal (flushed to zero by XLA and oneDNN)"


def _near_underflow(item, inputs: dict, hyper: dict, reference_for, backend) -> bool:
    """Whether a step comes near underflow, which some platforms flush to zero (see near_underflow): judged on the
    reference's trajectory from the inputs with `backend`'s formulas, never on its output."""
    switches = backend.optimizers.switches
    return update_properties.path_near_underflow(
        item.case.update.rule,
        hyper,
        switches,
        {spec.name: inputs[spec.name] for spec in item.case.variables},
        reference_for(switches, backend.conventions),
        item.case.update.steps,
        item.spec.dtype,
    )


def _discard_near_underflow(item, inputs: dict, hyper: dict, reference_for, backend) -> None:
    if _near_underflow(item, inputs, hyper, reference_for, backend):
        item.discard(NEAR_UNDERFLOW)


@property_test("update.matches_reference", requires="update")
def test_update_matches_reference(conformance_item, data):
    """Each native step from the backend's own parameters and gradients, and those gradients against the exact ones."""
    item = conformance_item
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    complete = _complete(item, hyper, item.backend)
    reference_for = update_properties.summed_reference(item.case, inputs, item.spec.dtype)
    _discard_near_underflow(item, inputs, complete, reference_for, item.backend)
    run = item.call("updates", inputs, hyper)
    comparison, steps = _health(item, _own_side(item, complete, run), inputs, reference_for)
    item.trajectory = update_properties.trajectory(run, steps["expected"])
    item.check(comparison, expected=steps["expected"][-1])


@pytest.mark.conformance("update.at_probes", requires="update")
def test_updates_at_probes(conformance_item):
    """The native steps at the run's probe inputs and hyperparameters (observations.py), recorded so that runs
    made apart can be compared, and each checked as update.matches_reference checks a drawn example."""
    item, dtype = conformance_item, conformance_item.spec.dtype
    probes = observations.probe_inputs(item.case, dtype, item.probe_seed)
    hypers = observations.probe_hyperparameters(item.case, dtype, item.probe_seed)
    for hyper in hypers:  # a rule or a default the backend lacks: not applicable before anything runs
        _complete(item, hyper, item.backend)
    runs = []
    for inputs, hyper in zip(probes, hypers, strict=True):
        item.last_inputs, item.examples = inputs, item.examples + 1
        runs.append(item.call("updates", inputs, hyper))
    item.observations = observations.update_observation(
        item.case,
        item.probe_seed,
        probes,
        hypers,
        runs,
        item.backend.conventions,
        decay_rates_in_dtype_of(item.backend, item.spec.device, item.spec.variant),
    )
    for inputs, hyper, run in zip(probes, hypers, runs, strict=True):
        complete = _complete(item, hyper, item.backend)
        reference_for = update_properties.summed_reference(item.case, inputs, dtype)
        if _near_underflow(item, inputs, complete, reference_for, item.backend):
            item.discarded[NEAR_UNDERFLOW] = item.discarded.get(NEAR_UNDERFLOW, 0) + 1
            continue
        comparison, steps = _health(item, _own_side(item, complete, run), inputs, reference_for)
        item.last_inputs = inputs
        item.check(comparison, expected=steps["expected"][-1])


@property_test("update.agrees_across_backends", requires="update", first_variant_only=True)
def test_update_agrees_across_backends(conformance_item, data):
    item, rule = conformance_item, conformance_item.case.update.rule
    mine = item.backend
    _require_optimizers(mine)
    installed = [other for other in map(backends.load, item.other_backends) if other.unavailable_reason() is None]
    others = [other for other in installed if _runs_the_rule(other, item.case)]
    if not others:
        pytest.skip("needs a second installed backend with a native optimizer for this rule in the run")
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    reference_for = update_properties.summed_reference(item.case, inputs, item.spec.dtype)
    complete = _complete(item, hyper, mine)
    sides = [(mine, complete)] + [(other, _complete(item, hyper, other)) for other in others]
    for backend, hyperparameters in sides:  # platforms differ in flushing subnormals, not in formulas
        _discard_near_underflow(item, inputs, hyperparameters, reference_for, backend)
    start = {spec.name: inputs[spec.name] for spec in item.case.variables}
    own = _own_side(item, complete, item.call("updates", inputs, hyper))
    # this backend's own steps and fed gradients first: a wrong training step fails here whatever the others do
    item.check(_health(item, own, inputs, reference_for)[0])
    partners = [
        (other, other_complete, item.call("updates", inputs, hyper, backend=other, partner=True))
        for other, other_complete in sides[1:]
    ]
    partners = [partner for partner in partners if partner[2] is not None]
    if not partners:
        pytest.skip("not applicable: no other backend in the run has a native way to run this case")
    for other, other_complete, their_run in partners:
        theirs = update_properties.Side(
            other.name,
            other_complete,
            other.optimizers,
            other.conventions,
            their_run,
            decay_rates_in_dtype_of(other, "cpu", other.training_step_variants()[0]),
        )
        verdict = update_properties.agreement(rule, hyper, own, theirs, start, reference_for, item.spec.dtype)
        if verdict.outcome == "divergent":
            item.explain(verdict.explanation, verdict.citation, verdict.comparison)
        else:
            item.check(verdict.comparison)


@property_test("accumulation.linear", requires="accumulate")
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
        comparisons.append(
            compare(
                f"micro-batch {'sum' if scale == 1 else 'mean'} of grad {name}",
                actual,
                np.asarray(full.gradients[name], np.float64),
                bound,
            )
        )
    item.check(worst(comparisons))


@property_test("accumulation.native", requires="accumulate")
def test_accumulation_native(conformance_item, data):
    """torch's .grad accumulation, Keras' gradient_accumulation_steps, optax.MultiSteps: what each documents."""
    item = conformance_item
    _native_accumulation(item)
    inputs = item.draw_inputs(data)
    run = item.call("accumulation", inputs)
    comparison, explanations = update_properties.native_accumulation(run, item.spec.dtype)
    item.check(comparison)
    if explanations:
        item.explain("; ".join(explanations), run.citation)


@pytest.mark.conformance("accumulation.at_probes", requires="accumulate")
def test_accumulation_at_probes(conformance_item):
    """The native accumulation at the run's probe inputs (observations.py), recorded so that runs made apart can be
    compared, and each checked as accumulation.native checks a drawn example."""
    item = conformance_item
    _native_accumulation(item)
    probes = observations.probe_inputs(item.case, item.spec.dtype, item.probe_seed)
    runs = []
    for inputs in probes:
        item.last_inputs, item.examples = inputs, item.examples + 1
        runs.append(item.call("accumulation", inputs))
    item.observations = observations.accumulation_observation(
        item.case, item.probe_seed, probes, runs, item.backend.conventions
    )
    for inputs, run in zip(probes, runs, strict=True):
        item.last_inputs = inputs
        comparison, explanations = update_properties.native_accumulation(run, item.spec.dtype)
        item.check(comparison)
        if explanations:
            item.explain("; ".join(explanations), run.citation)


@property_test("expect.goldens", requires="expect_update")
def test_update_goldens(conformance_item, data):
    """The case's [expect] values after its update, within the step-by-step bound of the reference."""
    item = conformance_item
    goldens = item.goldens()
    inputs = item.draw_inputs(data)
    hyper = data.draw(strategies.hyperparameters(item.case), label="hyperparameters")
    complete = _complete(item, hyper, item.backend)
    run = item.call("updates", inputs, hyper)
    _, steps = update_properties.matches_reference(
        item.case.update.rule,
        complete,
        item.backend.optimizers.switches,
        run,
        item.spec.dtype,
        decay_rates_in_dtype_of(item.backend, item.spec.device, item.spec.variant),
    )
    unit_roundoff = float(np.finfo(item.spec.dtype).eps) / 2
    comparisons = []
    for key, golden in goldens.items():
        name = key.removeprefix("grad.")
        actual = run.gradients[0][name] if key.startswith("grad.") else run.values[-1][name]
        carried = sum(bounds[name] for bounds in steps["bounds"])
        # the golden is a decimal: allow its rounding to the dtype on top of the steps' own bounds
        comparisons.append(
            compare(key, actual, np.broadcast_to(golden, np.shape(actual)), carried + np.abs(golden) * unit_roundoff)
        )
    item.check(worst(comparisons), expected=goldens)
