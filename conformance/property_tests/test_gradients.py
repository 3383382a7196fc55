"""Differentiation properties, parametrized over case x backend x variant x device x dtype by the plugin."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import backends, properties
from conformance.property_tests import property_test
from conformance.tolerance import compare, worst


@property_test("differentiation.values_unchanged", requires="no_update")
def test_values_unchanged(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    conformance_item.check(properties.values_unchanged(conformance_item.gradients(inputs)))


@property_test("differentiation.repeatable", requires="no_update")
def test_repeatable(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    conformance_item.check(properties.repeatable(conformance_item.gradients(inputs)))


@property_test("gradient.matches_reference", requires="no_update")
def test_matches_reference(conformance_item, data):
    inputs = conformance_item.draw_inputs(data)
    run = conformance_item.gradients(inputs)
    reference = conformance_item.reference(inputs)
    conformance_item.check(properties.matches_reference(run, reference), expected=reference.gradients)


@property_test("gradient.agrees_across_backends", requires="no_update")
def test_agrees_across_backends(conformance_item, data):
    item = conformance_item
    others = [backends.load(name) for name in item.other_backends]
    others = [other for other in others if other.unavailable_reason() is None]
    if not others:
        pytest.skip("needs a second installed backend in the run")
    inputs = item.draw_inputs(data)
    run, reference = item.gradients(inputs), item.reference(inputs)
    for other in others:
        other_run = item.gradients(inputs, backend=other)
        other_reference = item.reference(inputs, other.conventions)
        agreement = properties.agrees(run, other_run, reference.bounds, other_reference.bounds, other.name)
        missing = properties.missing_gradients(run) ^ properties.missing_gradients(other_run)
        if missing:
            item.explain(
                f"{', '.join(sorted(missing))}: the loss does not use it; torch and TensorFlow give no gradient "
                "(None), JAX gives zeros, and an optimizer treats both as zero",
                "https://pytorch.org/docs/stable/generated/torch.Tensor.grad.html",
            )
        if agreement.ok:
            item.check(agreement)
            continue
        # A difference is explained only when each backend matches the reference under its own conventions.
        own = properties.matches_reference(run, reference)
        theirs = properties.matches_reference(other_run, other_reference)
        switches = item.backend.conventions.differences(other.conventions)
        if own.ok and theirs.ok and switches:
            citations = {**other.conventions.citations, **item.backend.conventions.citations}
            differing = ", ".join(
                f"{s}: {getattr(item.backend.conventions, s)} vs {getattr(other.conventions, s)}" for s in switches
            )
            item.explain(
                f"{item.backend.name} and {other.name} differ at a kink or tie ({differing}): "
                f"{agreement.where} is {agreement.detail}",
                "; ".join(citations[s].url for s in switches if s in citations),
                agreement,
            )
            continue
        item.check(agreement)


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
