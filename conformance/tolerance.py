"""All judgement of closeness: special values by category first, then |actual - expected| against a derived bound.

The bounds themselves come from the reference (`reference.rounding`): this module only applies them, so
that no property carries a constant of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """The worst element of one comparison: its error, its bound, and where it is."""

    ok: bool
    max_error: float
    tolerance: float
    where: str
    detail: str = ""
    magnitude: float = 0.0  # |expected| at the worst element
    sensitivity: float = float("inf")  # the smallest relative error in every element that the bounds would catch
    failing_relative_error: float = 0.0  # the largest |error| / |expected| over the elements out of bound
    parts: tuple[Comparison, ...] = ()  # for a combined comparison: every failing comparison it combines

    def failures(self) -> tuple[Comparison, ...]:
        """Every failing comparison this one stands for: its parts, or itself."""
        return () if self.ok else (self.parts or (self,))

    @property
    def ratio(self) -> float:
        if self.tolerance > 0:
            return self.max_error / self.tolerance
        return 0.0 if self.max_error == 0 else float("inf")


def category(values: np.ndarray) -> np.ndarray:
    """nan, +inf, -inf or finite, elementwise, so that special values are compared before closeness."""
    values = np.asarray(values, dtype=np.float64)
    return np.select([np.isnan(values), values == np.inf, values == -np.inf], ["nan", "+inf", "-inf"], "finite")


def compare(name: str, actual: np.ndarray, expected: np.ndarray, bound: np.ndarray | float) -> Comparison:
    """`actual` (any float dtype) against `expected` (float64) within the elementwise `bound`."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return Comparison(
            False, float("inf"), 0.0, name, f"shape {list(actual.shape)}, expected {list(expected.shape)}"
        )
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), expected.shape)
    actual_category, expected_category = category(actual), category(expected)
    mismatched = actual_category != expected_category
    if np.any(mismatched):
        index = tuple(np.argwhere(mismatched)[0])
        return Comparison(
            False,
            float("inf"),
            float(bound[index]),
            _at(name, index),
            f"{float(actual[index])!r} where {float(expected[index])!r} is expected",
            failing_relative_error=float("inf"),
        )
    finite = expected_category == "finite"
    if not np.any(finite):
        return Comparison(True, 0.0, 0.0, name)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf - inf in the non-finite elements
        errors = np.where(finite, np.abs(actual - expected), 0.0)
        ratios = np.where(errors == 0, 0.0, errors / bound)
    index = np.unravel_index(int(np.argmax(ratios)), ratios.shape) if ratios.ndim else ()
    worst_error, worst_bound = float(errors[index]), float(bound[index])
    ok = worst_error <= worst_bound
    detail = "" if ok else f"{float(actual[index])!r} where {float(expected[index])!r} +- {worst_bound:.3g} is expected"
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(errors > bound, errors / np.abs(expected), 0.0)
    return Comparison(
        ok,
        worst_error,
        worst_bound,
        _at(name, index),
        detail,
        float(np.abs(expected[index])),
        sensitivity(expected, bound),
        float(np.nan_to_num(np.max(relative), nan=np.inf)),
    )


def sensitivity(expected: np.ndarray, bound: np.ndarray) -> float:
    """The smallest relative error r such that a result off by r in every element fails somewhere: min bound / |x|
    over the finite, nonzero expected elements with a rounding bound (inf where there are none; exact comparisons,
    such as a step count, say nothing about the size of error caught in floating-point values)."""
    expected = np.asarray(expected, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), expected.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(np.isfinite(expected) & (expected != 0) & (bound > 0), bound / np.abs(expected), np.inf)
    return float(np.min(relative)) if relative.size else float("inf")


def identical(name: str, first: np.ndarray, second: np.ndarray) -> Comparison:
    """Bit-for-bit equality (NaNs with the same bits count as equal): for values that must not change at all."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.dtype != second.dtype:
        return Comparison(
            False,
            float("inf"),
            0.0,
            name,
            f"{first.dtype}{list(first.shape)} became {second.dtype}{list(second.shape)}",
        )
    first_bytes = np.ascontiguousarray(first).reshape(-1).view(np.uint8).reshape(first.size, -1)
    second_bytes = np.ascontiguousarray(second).reshape(-1).view(np.uint8).reshape(second.size, -1)
    differs = np.any(first_bytes != second_bytes, axis=1)
    if not np.any(differs):
        return Comparison(True, 0.0, 0.0, name, sensitivity=0.0)
    index = np.unravel_index(int(np.argmax(differs)), first.shape)
    error = float(np.abs(np.float64(first[index]) - np.float64(second[index])))
    return Comparison(
        False,
        error,
        0.0,
        _at(name, index),
        f"{float(first[index])!r} became {float(second[index])!r}",
        float(np.abs(np.float64(first[index]))),
        0.0,
        float("inf"),
    )


def worst(comparisons: list[Comparison]) -> Comparison:
    """The first failing comparison if any, else the one closest to its bound; sensitive as the most sensitive of
    them, and carrying every failing one (a known failure's signature must account for all of them)."""
    failing = [part for c in comparisons for part in c.failures()]
    chosen = failing[0] if failing else max(comparisons, key=lambda c: c.ratio, default=Comparison(True, 0.0, 0.0, ""))
    return replace(
        chosen, sensitivity=min((c.sensitivity for c in comparisons), default=float("inf")), parts=tuple(failing)
    )


def _at(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(str(int(i)) for i in index)}]" if index else name
