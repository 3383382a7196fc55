"""The properties: short functions of plain numpy results, returning `Comparison`s; no framework code here."""

from __future__ import annotations

import numpy as np

from conformance.backends.base import GradientRun
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
