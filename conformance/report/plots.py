"""Geometry of a trajectory figure: actual against reference over the steps, and under it the error per step.

Only numbers and short labels are computed here; the template draws them as inline SVG, so the page needs
no script and no plotting library. NaN and infinities break a line and are named under the figure, and a
single step is drawn as dots. Coordinates are whole pixels: the figure is a few hundred pixels wide, and
a page of 5000 results has many of them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conformance.report.formatting import number

WIDTH = 360
LEFT, RIGHT, TOP, GAP, AXIS_LABELS = 58, 10, 8, 16, 16
VALUE_HEIGHT, ERROR_HEIGHT = 112, 56  # plotting areas
MAX_POINTS = 400  # beyond this, one step in k is drawn, so a long run cannot bloat the page


@dataclass(frozen=True)
class Line:
    css: str  # class of the stroke: "ref", "act" or "err"
    paths: tuple[str, ...]  # SVG "x,y x,y ..." for each run of finite points
    dots: tuple[tuple[int, int], ...]  # finite points with no finite neighbour


@dataclass(frozen=True)
class Panel:
    """One plotting area, stacked in the figure between `top` and `bottom`."""

    top: int
    bottom: int
    lines: tuple[Line, ...]
    y_ticks: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Figure:
    width: int
    height: int
    left: int
    right: int
    panels: tuple[Panel, ...]
    x_ticks: tuple[tuple[int, str], ...]  # drawn under the last panel
    non_finite_x: tuple[int, ...]  # steps where some value is NaN or infinite: marked on the top edge
    notes: tuple[str, ...]


def trajectory_figure(trajectory: dict[str, Any]) -> Figure | None:
    """The figure for whatever series are present; None when there is nothing to draw."""
    names = [name for name in ("reference", "actual", "error") if isinstance(trajectory.get(name), list)]
    series = {name: _floats(trajectory[name]) for name in names}
    length = max((len(values) for values in series.values()), default=0)
    if length == 0:
        return None
    steps = _floats(trajectory.get("steps"))
    if len(steps) != length or not all(math.isfinite(step) for step in steps):
        steps = [float(step) for step in range(length)]
    stride = math.ceil(length / MAX_POINTS)
    kept = list(range(0, length, stride))
    if kept[-1] != length - 1:
        kept.append(length - 1)
    steps = [steps[i] for i in kept]
    series = {name: [values[i] if i < len(values) else math.nan for i in kept] for name, values in series.items()}

    first, last, right = steps[0], steps[-1], WIDTH - RIGHT

    def x_of(step: float) -> float:
        return (LEFT + right) / 2 if last == first else LEFT + _fraction(step, first, last) * (right - LEFT)

    value_lines = [(css, series[name]) for css, name in (("ref", "reference"), ("act", "actual")) if name in series]
    error_lines = [("err", series["error"])] if "error" in series else []
    panels, top = [], TOP
    for lines, height, from_zero in ((value_lines, VALUE_HEIGHT, False), (error_lines, ERROR_HEIGHT, True)):
        if lines:
            panels.append(_panel(lines, top, top + height, steps, x_of, from_zero))
            top += height + GAP
    bottom = top - GAP
    tick_steps = dict.fromkeys((first, steps[len(steps) // 2], last))
    x_ticks = tuple((round(x_of(step)), number(step)) for step in tick_steps)
    non_finite = {
        round(x_of(s))
        for values in series.values()
        for s, v in zip(steps, values, strict=False)
        if not math.isfinite(v)
    }
    notes = tuple(note for name, values in series.items() for note in _non_finite_note(name, steps, values))
    notes += (f"one step in {stride} drawn",) if stride > 1 else ()
    return Figure(WIDTH, bottom + AXIS_LABELS, LEFT, right, tuple(panels), x_ticks, tuple(sorted(non_finite)), notes)


def _panel(
    series: list[tuple[str, list[float]]],
    top: int,
    bottom: int,
    steps: list[float],
    x_of: Callable[[float], float],
    from_zero: bool,
) -> Panel:
    finite = [v for _, values in series for v in values if math.isfinite(v)]
    low, high = _padded_range(finite, from_zero)

    def y_of(value: float) -> float:
        return bottom - _fraction(value, low, high) * (bottom - top)

    lines = []
    for css, values in series:
        points = [
            (x_of(step), y_of(value)) if math.isfinite(value) else None
            for step, value in zip(steps, values, strict=False)
        ]
        paths, dots = _segments(points)
        lines.append(Line(css, paths, dots))
    ticks = (low, (low + high) / 2, high) if bottom - top > 80 else (low, high)
    y_ticks = tuple((round(y_of(v)), number(v)) for v in ticks) if finite else ()
    return Panel(top, bottom, tuple(lines), y_ticks)


def _fraction(value: float, low: float, high: float) -> float:
    """Where value lies between low and high, in halves, so that a range near the float limits cannot overflow."""
    span = high / 2 - low / 2
    return (value / 2 - low / 2) / span if span else 0.5


def _segments(points: list[tuple[float, float] | None]) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Splits at missing points: runs of two or more become polylines, lone points become dots."""
    paths: list[str] = []
    dots: list[tuple[int, int]] = []
    run: list[tuple[float, float]] = []
    for point in points + [None]:
        if point is not None:
            run.append(point)
            continue
        if len(run) > 1:
            paths.append(" ".join(f"{x:.0f},{y:.0f}" for x, y in run))
        elif run:
            dots.append((round(run[0][0]), round(run[0][1])))
        run = []
    return tuple(paths), tuple(dots)


def _padded_range(values: Sequence[float], from_zero: bool) -> tuple[float, float]:
    """The y range: all finite values with a margin; a flat line gets a band around it."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if from_zero:
        low = min(low, 0.0)
    pad = (high / 2 - low / 2) / 10 or abs(high) / 10 or 1.0
    limit = sys.float_info.max
    return max(low - (0.0 if from_zero and low == 0.0 else pad), -limit), min(high + pad, limit)


def _non_finite_note(label: str, steps: list[float], values: list[float]) -> tuple[str, ...]:
    bad: dict[str, list[str]] = {}
    for step, value in zip(steps, values, strict=False):
        if not math.isfinite(value):
            bad.setdefault("NaN" if math.isnan(value) else ("+inf" if value > 0 else "-inf"), []).append(number(step))
    parts = [f"{kind} at step {', '.join(where[:8])}{' …' if len(where) > 8 else ''}" for kind, where in bad.items()]
    return (f"{label}: {'; '.join(parts)}",) if parts else ()


def _floats(values: Any) -> list[float]:
    """Numbers as floats; anything else (null, text) becomes NaN, so that it is named, not lost."""
    return [_float(value) for value in values] if isinstance(values, list) else []


def _float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else math.nan
    except ValueError:
        return math.nan
