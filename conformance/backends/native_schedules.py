"""Each framework's own learning-rate schedule for a case's `[update] schedule`, as its users write it.

Keras and optax take a schedule in place of the learning rate (`learning_rate=keras.optimizers.schedules.<Kind>(...)`,
`learning_rate=optax.<schedule>(...)`); a torch user builds a scheduler on the optimizer and calls
`scheduler.step()` after each `optimizer.step()`. Every kind is built from the framework's own classes and
functions; where a framework has none for a kind, the pair is NotApplicable with the reason.
"""

from __future__ import annotations

import math

from conformance.backends.base import NotApplicable
from conformance.backends.native_optimizers import OPTIMIZER, Call
from conformance.cases import Schedule


def keras_schedule(schedule: Schedule, lr: float, module: str) -> Call:
    """`<module>.optimizers.schedules.<Kind>(...)`, the learning rate `lr` at step 0 (a warm-up's start)."""
    name = f"{module}.optimizers.schedules"
    if schedule.kind == "exponential":
        arguments = {"decay_steps": schedule.decay_steps, "decay_rate": schedule.decay_rate}
        return Call(
            f"{name}.ExponentialDecay", (), {"initial_learning_rate": lr, **arguments, "staircase": schedule.staircase}
        )
    if schedule.kind == "cosine":
        arguments = {"initial_learning_rate": lr, "decay_steps": schedule.decay_steps, "alpha": schedule.alpha}
        return Call(f"{name}.CosineDecay", (), arguments)
    if schedule.kind == "warmup_cosine":
        arguments = {"initial_learning_rate": lr, "decay_steps": schedule.decay_steps, "alpha": schedule.alpha}
        warmup = {"warmup_target": schedule.peak, "warmup_steps": schedule.warmup_steps}
        return Call(f"{name}.CosineDecay", (), {**arguments, **warmup})
    return Call(
        f"{name}.PiecewiseConstantDecay", (), {"boundaries": list(schedule.boundaries), "values": list(schedule.values)}
    )


def optax_schedule(schedule: Schedule, lr: float) -> Call:
    """`optax.<schedule>(...)`. optax's warmup_cosine_decay_schedule counts its decay_steps from step 0, the warm-up
    included, and its piecewise schedule multiplies the value by a scale at each boundary."""
    if schedule.kind == "exponential":
        arguments = {"transition_steps": schedule.decay_steps, "decay_rate": schedule.decay_rate}
        return Call("optax.exponential_decay", (), {"init_value": lr, **arguments, "staircase": schedule.staircase})
    if schedule.kind == "cosine":
        arguments = {"init_value": lr, "decay_steps": schedule.decay_steps, "alpha": schedule.alpha}
        return Call("optax.cosine_decay_schedule", (), arguments)
    if schedule.kind == "warmup_cosine":
        arguments = {
            "init_value": lr,
            "peak_value": schedule.peak,
            "warmup_steps": schedule.warmup_steps,
            "decay_steps": schedule.warmup_steps + schedule.decay_steps,
            "end_value": schedule.alpha * schedule.peak,
        }
        return Call("optax.warmup_cosine_decay_schedule", (), arguments)
    values = schedule.values
    scales = {b: values[i + 1] / values[i] for i, b in enumerate(schedule.boundaries)}
    return Call("optax.piecewise_constant_schedule", (), {"init_value": values[0], "boundaries_and_scales": scales})


def torch_base_lr(schedule: Schedule, lr: float) -> float:
    """The lr a torch user gives the optimizer: the schedulers scale it, so a warm-up's is its peak."""
    return schedule.peak if schedule.kind == "warmup_cosine" else lr


def torch_scheduler(schedule: Schedule, lr: float) -> Call:
    """`torch.optim.lr_scheduler.<Scheduler>(optimizer, ...)`, over an optimizer built with `torch_base_lr`."""
    name = "torch.optim.lr_scheduler"
    if schedule.kind == "exponential" and schedule.staircase:
        return Call(f"{name}.StepLR", (OPTIMIZER,), {"step_size": schedule.decay_steps, "gamma": schedule.decay_rate})
    if schedule.kind == "exponential":
        return Call(f"{name}.ExponentialLR", (OPTIMIZER,), {"gamma": schedule.decay_rate ** (1 / schedule.decay_steps)})
    if schedule.kind == "cosine":
        return Call(
            f"{name}.CosineAnnealingLR", (OPTIMIZER,), {"T_max": schedule.decay_steps, "eta_min": schedule.alpha * lr}
        )
    if schedule.kind == "warmup_cosine":
        warmup = Call(
            f"{name}.LinearLR",
            (OPTIMIZER,),
            {"start_factor": lr / schedule.peak, "end_factor": 1.0, "total_iters": schedule.warmup_steps},
        )
        cosine = Call(
            f"{name}.CosineAnnealingLR",
            (OPTIMIZER,),
            {"T_max": schedule.decay_steps, "eta_min": schedule.alpha * schedule.peak},
        )
        return Call(
            f"{name}.SequentialLR",
            (OPTIMIZER,),
            {"schedulers": [warmup, cosine], "milestones": [schedule.warmup_steps]},
        )
    values = schedule.values
    ratios = [after / before for before, after in zip(values, values[1:], strict=False)]
    if not all(math.isclose(ratio, ratios[0], rel_tol=1e-12) for ratio in ratios):
        raise NotApplicable(
            "torch has no piecewise-constant schedule of arbitrary values: MultiStepLR multiplies the lr by one gamma "
            f"at each milestone, and these values change by {', '.join(f'{r:.6g}' for r in ratios)} "
            "(torch/optim/lr_scheduler.py)"
        )
    return Call(f"{name}.MultiStepLR", (OPTIMIZER,), {"milestones": list(schedule.boundaries), "gamma": ratios[0]})
