"""The learning-rate schedules' reference against values worked by hand, and against each framework's own schedule
read from its optimizer, step by step, as a training loop meets it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from conformance import backends
from conformance.backends import native_optimizers as native
from conformance.backends.base import NotApplicable
from conformance.cases import Schedule
from conformance.reference import optimizers, schedules
from conformance.update_properties import unit_roundoff

SWITCHES = {name: backends.load(name).optimizers.switches for name in ("torch", "tensorflow", "jax")}


def lr_of(schedule: Schedule, lr: float, k: int, after: str = "hold", boundary: str = "from_boundary") -> float:
    return schedules.learning_rate(schedule, lr, k, after, boundary)


# ---------------------------------------------------------------------------------------------------- by hand


def test_exponential_by_hand_smooth_and_staircase():
    smooth = Schedule("exponential", decay_steps=2, decay_rate=0.5)
    expected = [0.1, 0.1 / math.sqrt(2), 0.05, 0.05 / math.sqrt(2)]
    assert [lr_of(smooth, 0.1, k) for k in range(4)] == pytest.approx(expected, rel=1e-15)
    staircase = dataclasses.replace(smooth, staircase=True)
    assert [lr_of(staircase, 0.1, k) for k in range(5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], rel=1e-15)


def test_cosine_by_hand_holds_or_goes_on_past_its_end():
    cosine = Schedule("cosine", decay_steps=4, alpha=0.2)
    halves = [1.0, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 0.0]  # 0.5 (1 + cos(pi k / 4))
    assert [lr_of(cosine, 1.0, k) for k in range(5)] == pytest.approx([0.8 * h + 0.2 for h in halves], rel=1e-15)
    assert lr_of(cosine, 1.0, 6) == pytest.approx(0.2, rel=1e-15)
    assert lr_of(cosine, 1.0, 6, after="periodic") == pytest.approx(0.8 * 0.5 + 0.2, rel=1e-15)  # cos(3 pi / 2) = 0
    assert lr_of(cosine, 1.0, 8, after="periodic") == pytest.approx(1.0, rel=1e-15)


def test_warmup_cosine_by_hand():
    warmup = Schedule("warmup_cosine", warmup_steps=2, decay_steps=2, peak=0.1, alpha=0.5)
    assert [lr_of(warmup, 0.02, k) for k in range(6)] == pytest.approx([0.02, 0.06, 0.1, 0.075, 0.05, 0.05], rel=1e-15)


def test_piecewise_by_hand_at_and_after_each_boundary():
    piecewise = Schedule("piecewise", boundaries=(2, 4), values=(0.1, 0.05, 0.01))
    assert [lr_of(piecewise, 0.1, k) for k in range(6)] == [0.1, 0.1, 0.05, 0.05, 0.01, 0.01]
    assert [lr_of(piecewise, 0.1, k, boundary="after_boundary") for k in range(6)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.01]


def test_the_reference_step_takes_the_scheduled_learning_rate():
    hyper = {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, "schedule": Schedule("exponential", 1, 0.5)}
    params, state = {"x": np.asarray(2.0)}, optimizers.init("sgd", hyper, SWITCHES["torch"], {"x": np.asarray(2.0)})
    for k in range(3):
        params, state = optimizers.step("sgd", hyper, SWITCHES["torch"], params, {"x": np.asarray(1.0)}, state, k)
    assert float(params["x"]) == pytest.approx(2 - 0.1 - 0.05 - 0.025, rel=1e-15)


# ---------------------------------------------------------------------------------------------------- natively

LR = 0.0123  # not a float32 value, so that a float32 schedule shows
STEPS = 12  # past the end of every schedule below
SCHEDULES = {
    "exponential": Schedule("exponential", decay_steps=3, decay_rate=0.3),
    "staircase": Schedule("exponential", decay_steps=2, decay_rate=0.7, staircase=True),
    "cosine": Schedule("cosine", decay_steps=5, alpha=0.1),
    "warmup_cosine": Schedule("warmup_cosine", warmup_steps=3, decay_steps=4, peak=0.2, alpha=0.25),
    "piecewise": Schedule("piecewise", boundaries=(2, 5), values=(LR, LR / 2, LR / 4)),
}


def torch_rates(schedule: Schedule) -> list[float]:
    torch = pytest.importorskip("torch")
    parameter = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = native.torch_optimizer("sgd", {"lr": LR}, [parameter], schedule=schedule)
    scheduler = native.build(native.torch_scheduler(schedule, {"lr": LR}), optimizer)
    rates = []
    for _ in range(STEPS):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: nothing moves, but the scheduler sees a step taken
        scheduler.step()
    return rates


def keras_rates(schedule: Schedule) -> list[float]:
    tf = pytest.importorskip("tensorflow")
    optimizer = native.keras_optimizer("sgd", {"lr": LR}, schedule=schedule)
    variable = tf.Variable(0.0, dtype=tf.float64)
    rates = []
    for _ in range(STEPS):  # from 0, a gradient of -1 moves the variable to the learning rate cast to its dtype
        variable.assign(0.0)
        optimizer.apply_gradients([(tf.constant(-1.0, tf.float64), variable)])
        rates.append(float(variable.numpy()))
    return rates


def optax_rates(schedule: Schedule) -> list[float]:
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    with jax.enable_x64(True):
        optimizer = native.optax_optimizer("sgd", {"lr": LR}, schedule)
        gradient = jax.numpy.asarray(-1.0, jax.numpy.float64)
        state = optimizer.init(gradient)
        rates = []
        for _ in range(STEPS):
            updates, state = optimizer.update(gradient, state)
            assert updates.dtype == jax.numpy.float64
            rates.append(float(updates))
        return rates


RATES = {"torch": torch_rates, "tensorflow": keras_rates, "jax": optax_rates}


def reference_rates(schedule: Schedule, switches) -> list[float]:
    hyper = {"lr": LR, "schedule": schedule}
    return [optimizers.scheduled_lr(hyper, switches, k) for k in range(STEPS)]


def within_error(native_rates: list[float], reference: list[float], schedule: Schedule, u: float) -> bool:
    return all(
        abs(a - b) <= schedules.learning_rate_error(schedule, LR, k, u)
        for k, (a, b) in enumerate(zip(native_rates, reference, strict=True))
    )


@pytest.mark.parametrize("framework", RATES)
@pytest.mark.parametrize("kind", SCHEDULES)
def test_native_schedule_follows_the_reference_with_its_switches(framework, kind):
    """Every step's learning rate, as the optimizer applies it in a float64 run, within the schedule's derived error
    at the precision the framework declares."""
    schedule, switches = SCHEDULES[kind], SWITCHES[framework]
    u = unit_roundoff("float32" if schedules.in_float32(schedule, switches.schedule_precision) else "float64")
    assert within_error(RATES[framework](schedule), reference_rates(schedule, switches), schedule, u)


def test_torch_refuses_a_piecewise_schedule_of_no_common_ratio():
    with pytest.raises(NotApplicable, match="MultiStepLR"):
        native.torch_scheduler(Schedule("piecewise", boundaries=(1, 3), values=(0.1, 0.05, 0.01)), {"lr": 0.1})


@pytest.mark.parametrize("framework", RATES)
@pytest.mark.parametrize("switch", ["cosine_after_decay", "piecewise_boundary", "schedule_precision"])
def test_every_schedule_switch_value_is_needed(framework, switch):
    """Any other value of a framework's schedule switch puts some step's learning rate of some schedule outside
    even the float64 error: the switches are measured, not guessed."""
    own = SWITCHES[framework]
    native_rates = {kind: RATES[framework](schedule) for kind, schedule in SCHEDULES.items()}
    for other in set(schedules.SWITCH_MEANINGS[switch]) - {getattr(own, switch)}:
        flipped = dataclasses.replace(own, **{switch: other})
        assert not all(
            within_error(native_rates[kind], reference_rates(schedule, flipped), schedule, unit_roundoff("float64"))
            for kind, schedule in SCHEDULES.items()
        ), other
