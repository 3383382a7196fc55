"""What every backend provides: one framework, used the way its users write it, returning plain numpy."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.cases import Case
from conformance.expressions import FUNCTIONS, OperatorTarget, lower
from conformance.reference.conventions import KinkConventions
from conformance.reference.optimizers import OptimizerDeclaration

Arrays = dict[str, np.ndarray]


class NotApplicable(Exception):
    """This (case, backend) pair has no native equivalent; the message says why."""


@dataclass(frozen=True)
class GradientRun:
    """Everything one differentiation, and its repetition, left behind, copied out of the framework (the
    repetition's fields are None where a property asked for one differentiation: `differentiate_once`)."""

    loss: float
    values_before: Arrays
    values_after: Arrays  # after the first differentiation
    values_after_repeat: Arrays | None  # after differentiating a second time, as a user would in the next step
    gradients: dict[str, np.ndarray | None]  # None: the framework gives no gradient (an unused variable)
    gradients_repeat: dict[str, np.ndarray | None] | None


@dataclass(frozen=True)
class UpdateRun:
    """A k-step trajectory of the framework's own optimizer, and the state it holds afterwards."""

    values: list[Arrays]  # before the first step, then after each step
    gradients: list[dict[str, np.ndarray | None]]  # the gradient each step applied (None: the framework gave none)
    state: dict[str, dict[str, np.ndarray]]  # slot -> variable -> array, as `native_optimizers` reads it


REDUCTIONS = ("sum", "mean")  # what an accumulation mechanism may promise of the micro-batch gradients


@dataclass(frozen=True)
class AccumulationRun:
    """The framework's own gradient accumulation over micro-batches, and what its documentation promises."""

    mechanism: str  # e.g. "torch .grad accumulation over k backward() calls"
    promise: str  # "sum" or "mean" of the micro-batch gradients
    micro_gradients: list[dict[str, np.ndarray | None]]  # each micro-batch's own gradient
    accumulated: dict[str, np.ndarray]  # what the mechanism produced (a gradient, or the step it took with lr = 1)
    citation: str
    resolution: dict[str, np.ndarray] = field(default_factory=dict)  # a step read back as p0 - p1 is only this exact
    # the documented dtype the mechanism holds its sum in, where its state confirms it (None: the run's dtype)
    accumulator_dtype: str | None = None


@dataclass(frozen=True)
class AccumulationMechanism:
    """What a backend's native accumulation documents, declared so that a merge of results files can hold a
    recorded run to it: the reduction, whether the result is a step read back from the parameters (p0 - p1 after
    an SGD step with lr = 1, exact to one rounding of p1), and the accumulator dtype it documents (None: the run's)."""

    promise: str  # "sum" or "mean" of the micro-batch gradients
    step_read_back: bool = False
    accumulator_dtype: str | None = None


def step_resolution(start: Arrays, end: dict, dtype: str) -> dict[str, np.ndarray]:
    """How exactly p0 - p1 gives the step taken in `dtype`: one rounding of p1."""
    u = float(np.finfo(dtype).eps) / 2
    return {
        name: u * (np.abs(np.asarray(start[name], np.float64)) + np.abs(np.asarray(end[name], np.float64)))
        for name in end
    }


class Backend:
    """The interface of an adapter; subclasses override everything that raises NotImplementedError."""

    name: str = ""
    variants: tuple[str, ...] = ("default",)
    # the ways the framework runs a training step, where it ships several (torch's for-loop, foreach and fused
    # optimizers): the update items' variants; empty: the first of `variants`
    update_variants: tuple[str, ...] = ()
    conventions: KinkConventions = KinkConventions()
    accumulation_mechanism: AccumulationMechanism | None = None  # None: no native accumulation
    optimizers: OptimizerDeclaration | None = None  # None: no native optimizers (update items not applicable)

    def unavailable_reason(self) -> str | None:
        """None when the framework is installed and usable; otherwise why not, in one line."""
        return None

    def versions(self) -> dict[str, str]:
        raise NotImplementedError

    def training_step_variants(self) -> tuple[str, ...]:
        """The variants update items run: `update_variants`, else the first of `variants`."""
        return self.update_variants or self.variants[:1]

    def decay_rates_in_dtype(self, device: str, variant: str | None = None) -> bool:
        """Whether the native optimizers, run as `variant` (an update variant), cast decay rates to the variables'
        dtype before computing 1 - b^t on `device` (the conservative default; see update_properties.step_roundings)."""
        return True

    def devices(self) -> list[str]:
        return ["cpu"]

    def gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        """Differentiate, then differentiate again at the same point, as a user would in the next step."""
        raise NotImplementedError

    def differentiate_once(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> GradientRun:
        """One differentiation, for the properties that read one (the repetition's fields may be None): by default
        `gradients`, which differentiates twice; an adapter may do the one alone."""
        return self.gradients(case, inputs, dtype, variant, device)

    def bare_gradients(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> Callable[[], Any]:
        """One differentiation as the framework's users write it, with the inputs already in the framework and
        nothing copied out: what `conformance bench` times as the framework's own cost (optional)."""
        raise NotImplementedError

    def updates(self, case: Case, inputs: Arrays, hyper: dict, dtype: str, variant: str, device: str) -> UpdateRun:
        """`case.update.steps` steps of the native optimizer for `case.update.rule` with canonical `hyper`."""
        raise NotImplementedError

    def accumulation(self, case: Case, inputs: Arrays, dtype: str, variant: str, device: str) -> AccumulationRun:
        """The native accumulation mechanism over `case.micro_batches` micro-batches (see `micro_batches`)."""
        raise NotImplementedError

    def repro(self, case: Case, inputs: Arrays, dtype: str) -> str:
        """A standalone script that computes the case's gradients with this framework alone (an adapter may take a
        `variant` keyword too, and write the script that variant runs: see `repro_of`)."""
        raise NotImplementedError


def decay_rates_in_dtype_of(backend: Backend, device: str, variant: str) -> bool:
    """`backend.decay_rates_in_dtype(device, variant)`; `(device)` alone for an adapter written before update
    variants, which overrides the method with one argument."""
    method = backend.decay_rates_in_dtype
    if len(inspect.signature(method).parameters) < 2:
        return method(device)
    return method(device, variant)


def repro_of(backend: Backend, case: Case, inputs: Arrays, dtype: str, variant: str) -> str:
    """`backend.repro(case, inputs, dtype, variant)` where the adapter's reproducer takes the variant (torch's
    `compile`), else the one it writes for every variant."""
    if "variant" in inspect.signature(backend.repro).parameters:
        return backend.repro(case, inputs, dtype, variant=variant)
    return backend.repro(case, inputs, dtype)


def micro_batches(case: Case, inputs: Arrays) -> list[Arrays]:
    """Every data tensor's leading axis split in `case.micro_batches` equal parts; with no data the loss repeats."""
    if not case.micro_batches:
        return [inputs]
    count = case.micro_batches
    data_names = {spec.name for spec in case.data}
    return [
        {name: (np.split(value, count)[index] if name in data_names else value) for name, value in inputs.items()}
        for index in range(count)
    ]


def copied(values: dict[str, Any], to_numpy) -> Arrays:
    """Copies out of framework memory, so that later in-place changes cannot alter what was recorded."""
    return {name: np.array(to_numpy(value), copy=True) for name, value in values.items()}


class SourceTarget(OperatorTarget):
    """Lowers an expression to source text for a reproducer; `formats` maps each function to a template."""

    def __init__(self, formats: dict[str, str], constant_format: str = "{!r}"):
        # "@" may override matmul; a loss function the framework lacks has no format (its cases are not applicable)
        missing = {name for name, spec in FUNCTIONS.items() if not spec.loss} - {
            n.removesuffix("@axis") for n in formats
        }
        if missing:
            raise ValueError(f"no source format for {sorted(missing)}")
        self.formats, self.constant_format = formats, constant_format

    def constant(self, value: float) -> str:
        return self.constant_format.format(value)

    def binary(self, op: str, left: str, right: Any) -> str:
        if op in self.formats:
            return self.formats[op].format(left, right)
        return f"({left} {op} {right!r})" if op == "**" else f"({left} {op} {right})"

    def negate(self, operand: str) -> str:
        return f"(-{operand})"

    def call(self, function: str, args: list[str], axis: int | None, options: dict) -> str:
        template = self.formats.get(f"{function}@axis" if axis is not None else function, self.formats[function])
        return template.format(*args, axis=axis, **options)


def source_of(case: Case, formats: dict[str, str], constant_format: str = "{!r}") -> str:
    return lower(case.loss, SourceTarget(formats, constant_format), {spec.name: spec.name for spec in case.tensors})


def literal(array: np.ndarray) -> str:
    """A Python literal that round-trips the array's values exactly (repr of floats is exact)."""
    return repr(np.asarray(array, dtype=np.float64).tolist())
