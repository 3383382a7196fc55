"""The properties: short functions of plain numpy results, returning `Comparison`s; no framework code here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from conformance.backends.base import GradientRun
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import ReferenceGradient
from conformance.tolerance import Comparison, compare, identical, worst


def present(gradient: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """A missing gradient (None) means zero to an optimizer; shape and dtype come from the variable."""
    return np.zeros_like(like) if gradient is None else gradient


def values_unchanged(run: GradientRun) -> Comparison:
    """Differentiation must leave every variable bit-for-bit as it was, also when it is repeated."""
    return worst(
        [
            identical(f"{name} after differentiation", before, after[name])
            for after in (run.values_after, run.values_after_repeat)
            for name, before in run.values_before.items()
        ]
    )


def repeatable(run: GradientRun) -> Comparison:
    """Differentiating again at the same point gives bit-identical gradients: no state leaks between calls."""
    return worst(
        [
            identical(
                f"grad {name} repeated", present(run.gradients[name], value), present(run.gradients_repeat[name], value)
            )
            for name, value in run.values_before.items()
        ]
    )


def matches_reference(run: GradientRun, reference: ReferenceGradient) -> Comparison:
    return worst(
        [
            compare(
                f"grad {name}",
                present(run.gradients[name], run.values_before[name]),
                reference.gradients[name],
                reference.bounds[name],
            )
            for name in reference.gradients
        ]
    )


def agrees(
    run: GradientRun,
    other: GradientRun,
    bounds: dict[str, np.ndarray],
    other_bounds: dict[str, np.ndarray],
    other_name: str,
) -> Comparison:
    """Two backends agree within the sum of their rounding bounds."""
    return worst(
        [
            compare(
                f"grad {name} against {other_name}",
                present(run.gradients[name], run.values_before[name]),
                present(other.gradients[name], run.values_before[name]),
                bounds[name] + other_bounds[name],
            )
            for name in bounds
        ]
    )


def missing_gradients(run: GradientRun) -> set[str]:
    return {name for name, gradient in run.gradients.items() if gradient is None}


@dataclass(frozen=True)
class GradientSide:
    """One backend's part in a gradient agreement: its run, the reference under its own conventions, and those."""

    name: str
    run: GradientRun
    reference: ReferenceGradient
    conventions: KinkConventions


@dataclass(frozen=True)
class Verdict:
    """`comparison` holds (pass) or fails; a failing one is explained (divergent) when `explanation` is set."""

    comparison: Comparison
    explanation: str | None = None
    citation: str | None = None


def gradient_agreement(
    mine: GradientSide,
    theirs: GradientSide,
    reference_under: Callable[[KinkConventions], ReferenceGradient] | None = None,
) -> Verdict:
    """Whether two backends' gradients agree, and if not, whether a documented convention explains the gap: only
    when each matches the reference under its own conventions, and those differ. With `reference_under` (the
    reference at these inputs under given conventions) the explanation names the switches that move the reference
    here, each flipped alone to the other backend's value; all that differ where none does alone."""
    agreement = agrees(mine.run, theirs.run, mine.reference.bounds, theirs.reference.bounds, theirs.name)
    missing = missing_gradients(mine.run) ^ missing_gradients(theirs.run)
    if agreement.ok:
        if not missing:
            return Verdict(agreement)
        return Verdict(
            agreement,
            f"{', '.join(sorted(missing))}: the loss does not use it; torch and TensorFlow give no gradient "
            "(None), JAX gives zeros, and an optimizer treats both as zero",
            "https://pytorch.org/docs/stable/generated/torch.Tensor.grad.html",
        )
    switches = mine.conventions.differences(theirs.conventions)
    own, other = matches_reference(mine.run, mine.reference), matches_reference(theirs.run, theirs.reference)
    if not (own.ok and other.ok and switches):
        return Verdict(agreement)
    if reference_under is not None:
        switches = [s for s in switches if _moves_reference(mine, theirs, s, reference_under)] or switches
    citations = {**theirs.conventions.citations, **mine.conventions.citations}
    differing = ", ".join(f"{s}: {getattr(mine.conventions, s)} vs {getattr(theirs.conventions, s)}" for s in switches)
    return Verdict(
        agreement,
        f"{mine.name} and {theirs.name} differ in a documented convention ({differing}): {agreement.where} is "
        f"{agreement.detail}",
        "; ".join(citations[s].url for s in switches if s in citations),
    )


def _moves_reference(mine: GradientSide, theirs: GradientSide, switch: str, reference_under) -> bool:
    flipped = reference_under(dataclasses.replace(mine.conventions, **{switch: getattr(theirs.conventions, switch)}))
    return any(
        not np.array_equal(flipped.gradients[name], mine.reference.gradients[name], equal_nan=True)
        for name in mine.reference.gradients
    )
