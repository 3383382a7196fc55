"""What an adapter must return, checked on every call: a broken adapter (a flattened gradient, a variable left out,
a trajectory of the wrong length) is an error blamed on the adapter, never a failure blamed on its framework."""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.backends.base import REDUCTIONS, AccumulationRun, GradientRun, UpdateRun
from conformance.cases import Case


class ContractViolation(ValueError):
    """The adapter returned something the interface does not allow; the message says what, in one line."""


def check(method: str, result: Any, case: Case, dtype: str) -> None:
    """ContractViolation unless `result` is what `Backend.<method>` promises for `case` in `dtype`."""
    checks = {
        "gradients": _gradient_run,
        "differentiate_once": _one_differentiation,
        "updates": _update_run,
        "accumulation": _accumulation_run,
    }
    if method in checks:
        checks[method](result, case, dtype)


def _gradient_run(run: Any, case: Case, dtype: str, method: str = "gradients", repeated: bool = True) -> None:
    _is(run, GradientRun, method)
    # the values before are the inputs as the adapter placed them; what differentiation or a step makes of them
    # afterwards, their dtype included, is the framework's doing, for the properties to judge
    _variables(run.values_before, case, f"{method}: values_before", dtype=dtype)
    _variables(run.values_after, case, f"{method}: values_after")
    _variables(run.gradients, case, f"{method}: gradients", none_allowed=True)
    if repeated or run.values_after_repeat is not None or run.gradients_repeat is not None:
        _variables(run.values_after_repeat, case, f"{method}: values_after_repeat")
        _variables(run.gradients_repeat, case, f"{method}: gradients_repeat", none_allowed=True)


def _one_differentiation(run: Any, case: Case, dtype: str) -> None:
    """A GradientRun whose repetition may be left out (None, both), or given as in `gradients`."""
    _gradient_run(run, case, dtype, "differentiate_once", repeated=False)


def _update_run(run: Any, case: Case, dtype: str) -> None:
    _is(run, UpdateRun, "updates")
    steps = case.update.steps
    if len(run.values) != steps + 1 or len(run.gradients) != steps:
        raise ContractViolation(
            f"updates: {len(run.values)} values and {len(run.gradients)} gradients for {steps} steps "
            f"(expected {steps + 1} and {steps})"
        )
    _variables(run.values[0], case, "updates: values[0]", dtype=dtype)
    for step, values in enumerate(run.values[1:], start=1):
        _variables(values, case, f"updates: values[{step}]")
    for step, gradients in enumerate(run.gradients):
        _variables(gradients, case, f"updates: gradients[{step}]", none_allowed=True)


def _accumulation_run(run: Any, case: Case, dtype: str) -> None:
    _is(run, AccumulationRun, "accumulation")
    if run.promise not in REDUCTIONS:
        raise ContractViolation(f"accumulation: promise {run.promise!r} is not one of {', '.join(REDUCTIONS)}")
    if len(run.micro_gradients) != (case.micro_batches or 1):
        raise ContractViolation(
            f"accumulation: {len(run.micro_gradients)} micro-batch gradients for {case.micro_batches} micro-batches"
        )
    for index, gradients in enumerate(run.micro_gradients):
        _variables(gradients, case, f"accumulation: micro_gradients[{index}]", none_allowed=True)
    _variables(run.accumulated, case, "accumulation: accumulated")


def _is(result: Any, kind: type, method: str) -> None:
    if not isinstance(result, kind):
        raise ContractViolation(f"{method} returned a {type(result).__name__}, not a {kind.__name__}")


def _variables(values: Any, case: Case, where: str, dtype: str | None = None, none_allowed: bool = False) -> None:
    """One floating-point array per variable of the case, of its shape (and of `dtype` where given)."""
    if not isinstance(values, dict) or set(values) != set(case.variable_names):
        names = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ContractViolation(f"{where}: variables {names}, not {sorted(case.variable_names)}")
    for spec in case.variables:
        value = values[spec.name]
        if value is None and none_allowed:
            continue
        if not isinstance(value, np.ndarray | np.generic) or not np.issubdtype(value.dtype, np.floating):
            raise ContractViolation(f"{where}: {spec.name} is a {type(value).__name__}, not a float numpy array")
        if value.shape != spec.shape:
            raise ContractViolation(f"{where}: {spec.name} has shape {list(value.shape)}, not {list(spec.shape)}")
        if dtype is not None and value.dtype != np.dtype(dtype):
            raise ContractViolation(f"{where}: {spec.name} is {value.dtype}, not {dtype}")
