"""Switches of the reference: the documented conventions in which frameworks legitimately differ.

A backend declares the switches it follows, each with a citation; a difference between two backends is
*explained* only when the reference, run with each backend's own switches, reproduces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Citation:
    """Where a framework documents (or implements) a convention."""

    text: str
    url: str


SOFTPLUS_LINEAR_FROM = 14.0
SWITCH_NAMES = ("abs_slope_at_zero", "maximum_tie_to_first", "minimum_tie_to_first", "softplus_linear_above")


@dataclass(frozen=True)
class KinkConventions:
    """What a framework computes where the mathematical derivative does not exist, or where it approximates."""

    abs_slope_at_zero: float = 0.0  # d|x|/dx at x = 0
    maximum_tie_to_first: float = 0.5  # share of d maximum(a, b) that goes to a when a == b
    minimum_tie_to_first: float = 0.5  # the same for minimum
    softplus_linear_above: float = float("inf")  # softplus(x) is taken to be x above this threshold
    citations: dict[str, Citation] = field(default_factory=dict, compare=False)

    def values(self) -> tuple[float, ...]:
        """In the order of `symbolic.CONVENTION_SYMBOLS`."""
        return tuple(getattr(self, name) for name in SWITCH_NAMES)

    def inadmissible(self) -> str | None:
        """Why a declared value is no derivative a framework could honestly give, or None: the slope of |x| at 0
        must be a subgradient (in [-1, 1]), a tie's share a convex combination (in [0, 1]), and softplus may be
        taken as linear only where log(1 + exp(-t)) is below float32's rounding of t (t >= 14)."""
        for name in ("abs_slope_at_zero", "maximum_tie_to_first", "minimum_tie_to_first", "softplus_linear_above"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                return f"{name} = {value!r} is not a number"
        if not -1 <= self.abs_slope_at_zero <= 1:
            return f"abs_slope_at_zero = {self.abs_slope_at_zero!r} is outside [-1, 1], the subgradients of |x| at 0"
        for name in ("maximum_tie_to_first", "minimum_tie_to_first"):
            if not 0 <= getattr(self, name) <= 1:
                return f"{name} = {getattr(self, name)!r} is outside [0, 1]: a tie's gradient is shared, not created"
        if self.softplus_linear_above < SOFTPLUS_LINEAR_FROM:
            return (
                f"softplus_linear_above = {self.softplus_linear_above!r} is below {SOFTPLUS_LINEAR_FROM}, where "
                "softplus(t) - t exceeds float32's rounding of t"
            )
        return None

    def differences(self, other: KinkConventions) -> list[str]:
        """The names of the switches on which two conventions differ."""
        return [name for name in SWITCH_NAMES if getattr(self, name) != getattr(other, name)]
