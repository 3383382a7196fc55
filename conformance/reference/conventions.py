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

    def differences(self, other: KinkConventions) -> list[str]:
        """The names of the switches on which two conventions differ."""
        return [name for name in SWITCH_NAMES if getattr(self, name) != getattr(other, name)]
