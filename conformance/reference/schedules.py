"""Learning-rate schedules in float64: the learning rate of the k-th step (k = 0 for the first) from the case's lr.

Every framework hands its optimizer the schedule's value at the count of steps already taken: Keras calls the
schedule with `optimizer.iterations`, optax with its state's `count`, and a torch user calls `scheduler.step()`
after `optimizer.step()`. Where the frameworks' schedules differ in what they mean, a switch says which (cited in
each backend's declaration): torch's CosineAnnealingLR keeps following its cosine past `decay_steps`, back up to
the lr by 2 * decay_steps, where Keras and optax hold the final value; Keras' PiecewiseConstantDecay takes a
boundary's new value one step later than optax and torch's MultiStepLR; Keras computes every schedule in float32,
and optax some, in float64 runs too.
"""

from __future__ import annotations

import math

import numpy as np

from conformance.cases import Schedule

SWITCH_MEANINGS = {
    "cosine_after_decay": {
        "hold": "past decay_steps the cosine stays at its end, alpha * lr",
        "periodic": "past decay_steps the cosine goes on, back up to lr at 2 * decay_steps (torch's CosineAnnealingLR)",
    },
    "schedule_precision": {
        "float64": "the schedule is computed in double precision (Python floats), in every run",
        "float32": "the schedule is computed in float32, in float64 runs too: each step's learning rate is a float32 "
        "value",
        "float32_exponential_warmup": "exponential and warm-up schedules are computed in float32, in float64 runs "
        "too (an int32 step count divided by an integer), cosine and piecewise ones in double precision",
    },
    "piecewise_boundary": {
        "from_boundary": "the value after a boundary b applies from the step that has b steps before it",
        "after_boundary": "the value after a boundary b applies from the step that has b + 1 steps before it",
    },
}


def in_float32(schedule: Schedule, precision: str) -> bool:
    """Whether a framework of this `schedule_precision` computes this schedule in float32 whatever the run's dtype."""
    return precision == "float32" or (
        precision == "float32_exponential_warmup" and schedule.kind in ("exponential", "warmup_cosine")
    )


def learning_rate(schedule: Schedule, lr: float, k: int, cosine_after_decay: str, piecewise_boundary: str) -> float:
    """The learning rate of the step with `k` steps before it."""
    if schedule.kind == "exponential":
        exponent = k / schedule.decay_steps
        return lr * schedule.decay_rate ** (math.floor(exponent) if schedule.staircase else exponent)
    if schedule.kind == "cosine":
        return _cosine(lr, k, schedule, cosine_after_decay)
    if schedule.kind == "warmup_cosine":
        if k < schedule.warmup_steps:
            return lr + (schedule.peak - lr) * k / schedule.warmup_steps
        return _cosine(schedule.peak, k - schedule.warmup_steps, schedule, cosine_after_decay)
    passed = sum(k >= b if piecewise_boundary == "from_boundary" else k > b for b in schedule.boundaries)
    return schedule.values[passed]


def _cosine(start: float, k: int, schedule: Schedule, after_decay: str) -> float:
    k = min(k, schedule.decay_steps) if after_decay == "hold" else k
    return start * ((1 - schedule.alpha) * 0.5 * (1 + math.cos(math.pi * k / schedule.decay_steps)) + schedule.alpha)


def learning_rate_error(schedule: Schedule, lr: float, k: int, u: float) -> float:
    """How far a framework's learning rate for the step with `k` steps before it may lie from `learning_rate`, its
    closed form computed with unit roundoff `u` (float32's where `in_float32`); torch's schedulers recurse from step
    to step instead, in Python floats, which adds k double-precision terms (`DOUBLE`):

    - exponential: lr and the decay rate rounded, k / decay_steps, the power and the product, (k / decay_steps
      + 5) u relative (the power carries the base's rounding times the exponent); torch's ExponentialLR multiplies
      by gamma once a step, k + 2 roundings;
    - cosine: pi, k / decay_steps and their product put cos's argument off by 3 pi u, so cos is off by
      (3 pi + 1) u absolute, half of which reaches the value, and alpha, 1 - alpha, the sum and the product add
      4 u of lr: 12 u lr; torch's CosineAnnealingLR recursion adds about 6 u of lr a step;
    - warmup_cosine: the same of the peak, and the warm-up's line 4 u: 16 u max(lr, peak), torch's LinearLR
      recursing as well (4 u a step);
    - piecewise: each value rounded, optax's scales (their quotients) and products, torch's gammas: (2 + 2 n) u of
      the step's value for n boundaries (the larger where the boundary conventions disagree)."""
    if schedule.kind == "exponential":
        rate = abs(learning_rate(schedule, lr, k, "hold", "from_boundary"))
        return ((k / schedule.decay_steps + 6) * u + (k + 2) * DOUBLE) * rate
    if schedule.kind == "cosine":
        return (12 * u + 6 * k * DOUBLE) * abs(lr)
    if schedule.kind == "warmup_cosine":
        return (16 * u + 10 * k * DOUBLE) * max(abs(lr), schedule.peak)
    rate = max(learning_rate(schedule, lr, k, "hold", boundary) for boundary in ("from_boundary", "after_boundary"))
    return (2 + 2 * len(schedule.boundaries)) * u * rate


DOUBLE = float(np.finfo(np.float64).eps) / 2  # the unit roundoff of torch's Python floats
