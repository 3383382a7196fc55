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
SWITCH_NAMES = (
    "abs_slope_at_zero",
    "maximum_tie_to_first",
    "minimum_tie_to_first",
    "softplus_linear_above",
    "probability_clip",
    "smoothing_classes_last_axis",
    "kl_mean_over_first_axis",
    "sum_of_row_means",
    "cross_entropy_normalized_targets",
)
FLAGS = SWITCH_NAMES[5:]


@dataclass(frozen=True)
class KinkConventions:
    """What a framework computes where the mathematical derivative does not exist, or where it approximates; and the
    small print of its loss functions (clamps, reductions, label smoothing). Numbers all, since they are inputs of
    the compiled reference; a flag is 0 or 1."""

    abs_slope_at_zero: float = 0.0  # d|x|/dx at x = 0
    maximum_tie_to_first: float = 0.5  # share of d maximum(a, b) that goes to a when a == b
    minimum_tie_to_first: float = 0.5  # the same for minimum
    softplus_linear_above: float = float("inf")  # softplus(x) is taken to be x above this threshold
    # binary_cross_entropy and kl_divergence clip probabilities to [c, 1 - c] and targets to [c, 1] (Keras'
    # epsilon); 0: no clip, where binary_cross_entropy is torch's: its log clamped at -100 and its gradient
    # (p - t) / max(p (1 - p), 1e-12)
    probability_clip: float = 0.0
    smoothing_classes_last_axis: float = 0.0  # label smoothing's class count: the last axis' size, not `axis`'s
    kl_mean_over_first_axis: float = 0.0  # kl_divergence's mean divides by the first axis' size (torch's batchmean)
    sum_of_row_means: float = 0.0  # reduction="sum" of an elementwise loss sums its means over the last axis
    cross_entropy_normalized_targets: float = 0.0  # its gradient softmax - targets: as if the targets summed to 1
    citations: dict[str, Citation] = field(default_factory=dict, compare=False)

    def values(self) -> tuple[float, ...]:
        """In the order of `symbolic.CONVENTION_SYMBOLS`."""
        return tuple(getattr(self, name) for name in SWITCH_NAMES)

    def inadmissible(self) -> str | None:
        """Why a declared value is no derivative a framework could honestly give, or None: the slope of |x| at 0
        must be a subgradient (in [-1, 1]), a tie's share a convex combination (in [0, 1]), and softplus may be
        taken as linear only where log(1 + exp(-t)) is below float32's rounding of t (t >= 14)."""
        for name in SWITCH_NAMES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                return f"{name} = {value!r} is not a number"
        if not -1 <= self.abs_slope_at_zero <= 1:
            return f"abs_slope_at_zero = {self.abs_slope_at_zero!r} is outside [-1, 1], the subgradients of |x| at 0"
        for name in ("maximum_tie_to_first", "minimum_tie_to_first"):
            if not 0 <= getattr(self, name) <= 1:
                return f"{name} = {getattr(self, name)!r} is outside [0, 1]: a tie's gradient is shared, not created"
        for name in FLAGS:
            if getattr(self, name) not in (0, 1):
                return f"{name} = {getattr(self, name)!r} is a flag: 0 or 1"
        if not 0 <= self.probability_clip < 0.5:
            return f"probability_clip = {self.probability_clip!r} is outside [0, 0.5): it would clip every probability"
        if self.softplus_linear_above < SOFTPLUS_LINEAR_FROM:
            return (
                f"softplus_linear_above = {self.softplus_linear_above!r} is below {SOFTPLUS_LINEAR_FROM}, where "
                "softplus(t) - t exceeds float32's rounding of t"
            )
        return None

    def differences(self, other: KinkConventions) -> list[str]:
        """The names of the switches on which two conventions differ."""
        return [name for name in SWITCH_NAMES if getattr(self, name) != getattr(other, name)]
