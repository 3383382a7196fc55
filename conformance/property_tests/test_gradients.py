"""Differentiation properties, parametrized over case x backend x variant x device x dtype by the plugin."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import backends, observations, properties
from conformance.property_tests import property_test
from conformance.tolerance import compare, worst


@property_test("differentiation.values_unchanged", requires="no_update")
def test_values_unchanged(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    conformance_item.check(properties.values_unchanged(conformance_item.gradients(inputs, repeated=True)))


@property_test("differentiation.repeatable", requires="no_update")
def test_repeatable(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    conformance_item.check(properties.repeatable(conformance_item.gradients(inputs, repeated=True)))


@property_test("gradient.matches_reference", requires="no_update")
def test_matches_reference(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    run = conformance_item.gradients(inputs)
    reference = conformance_item.reference(inputs)
    conformance_item.check(properties.matches_reference(run, reference), expected=reference.gradients)


@pytest.mark.conformance("gradient.at_probes", requires="no_update")
def test_gradients_at_probes(conformance_item):
    """The gradients at the run's probe inputs (observations.py), against the reference there and recorded, so
    that runs made apart can be compared: no Hypothesis, the probes are the same in every run."""
    item = conformance_item
    probes = observations.probe_inputs(item.case, item.spec.dtype, item.probe_seed)
    runs, references = [], []
    for inputs in probes:
        item.last_inputs, item.examples = inputs, item.examples + 1
        runs.append(item.gradients(inputs))
        references.append(item.reference(inputs))
    item.observations = observations.gradient_observation(
        item.case, item.probe_seed, probes, runs, item.backend.conventions
    )
    for inputs, run, reference in zip(probes, runs, references, strict=True):
        item.last_inputs = inputs
        item.check(properties.matches_reference(run, reference), expected=reference.gradients)


@property_test("gradient.agrees_across_backends", requires="no_update")
def test_agrees_across_backends(conformance_item, data):
    item = conformance_item
    others = [backends.load(name) for name in item.other_backends]
    others = [other for other in others if other.unavailable_reason() is None]
    if not others:
        pytest.skip("needs a second installed backend in the run")
    inputs = item.draw_inputs(data)
    run, reference = item.gradients(inputs), item.reference(inputs)
    mine = properties.GradientSide(item.backend.name, run, reference, item.backend.conventions)
    compared = 0
    for other in others:
        their_run = item.call("differentiate_once", inputs, backend=other, partner=True)
        if their_run is None:  # the partner cannot run the case natively: it is left out of the comparison
            continue
        compared += 1
        theirs = properties.GradientSide(
            other.name, their_run, item.reference(inputs, other.conventions), other.conventions
        )
        verdict = properties.gradient_agreement(mine, theirs, lambda conventions: item.reference(inputs, conventions))
        if verdict.explanation:
            item.explain(verdict.explanation, verdict.citation, None if verdict.comparison.ok else verdict.comparison)
        if verdict.explanation is None or verdict.comparison.ok:
            item.check(verdict.comparison)
    if not compared:
        pytest.skip("no other backend in the run can run this case natively")


@property_test("expect.goldens", requires="expect")
def test_goldens(conformance_item, data):
    """The case's [expect] values, on every backend; the tolerance is the reference's bound at those inputs."""
    goldens = conformance_item.goldens()
    inputs = conformance_item.draw_inputs(data)
    run = conformance_item.gradients(inputs)
    reference = conformance_item.reference(inputs)
    unit_roundoff = float(np.finfo(conformance_item.spec.dtype).eps) / 2
    comparisons = []
    for key, golden in goldens.items():
        name = key.removeprefix("grad.")
        if key.startswith("grad."):
            actual, bound = properties.present(run.gradients[name], run.values_before[name]), reference.bounds[name]
        else:
            actual, bound = run.values_after[name], 0.0
        # the golden is a decimal: allow its rounding to the dtype on top of the computation's own bound
        comparisons.append(
            compare(key, actual, np.broadcast_to(golden, actual.shape), bound + np.abs(golden) * unit_roundoff)
        )
    conformance_item.check(worst(comparisons), expected=goldens)
