"""Switches of the reference: the documented conventions in which frameworks legitimately differ.

A backend declares the switches it follows, each with a citation; a difference between two backends is
*explained* only when the reference, run with each backend's own switches, reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Citation:
    """Where a framework documents (or implements) a convention."""

    text: str
    url: str


@dataclass(frozen=True)
class KinkConventions:
    """What a framework's derivative is at the points where the mathematical one does not exist."""

    abs_slope_at_zero: float = 0.0  # d|x|/dx at x = 0
    maximum_tie_to_first: float = 0.5  # share of d maximum(a, b) that goes to a when a == b
    minimum_tie_to_first: float = 0.5  # the same for minimum
    citations: dict[str, Citation] = field(default_factory=dict, compare=False)

    def values(self) -> tuple[float, float, float]:
        """In the order of `symbolic.CONVENTION_SYMBOLS`."""
        return (self.abs_slope_at_zero, self.maximum_tie_to_first, self.minimum_tie_to_first)

    def differences(self, other: KinkConventions) -> list[str]:
        """The names of the switches on which two conventions differ."""
        names = ("abs_slope_at_zero", "maximum_tie_to_first", "minimum_tie_to_first")
        return [name for name in names if getattr(self, name) != getattr(other, name)]
