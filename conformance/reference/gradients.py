"""The gradient oracle: SymPy differentiates the loss once per case; each draw is evaluated in float64 with a bound.

Evaluation is `lambdify` to numpy (about 0.2 ms per draw for a 20-variable case), returning the loss, every
gradient element, and a first-order bound on every element's rounding error (`rounding.py`). The bound is
evaluated with u = u(dtype under test) + u(float64), so it covers both the framework's rounding and the
reference's own float64 rounding; exactness beyond float64 is needed only when that sum is not below the
error one wants to catch, which `conformance.tolerance` checks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

from conformance.cases import Case
from conformance.expressions import lower
from conformance.reference import cache, symbolic
from conformance.reference.conventions import KinkConventions
from conformance.reference.rounding import TINY, UNIT_ROUNDOFF, FlushBound, RoundingBound


@dataclass(frozen=True)
class ReferenceGradient:
    loss: float
    gradients: dict[str, np.ndarray]
    bounds: dict[str, np.ndarray]  # |float evaluation - exact| <= bound, elementwise


class CompiledGradient:
    """The exact loss and gradient of one case, compiled to a numpy function of the inputs."""

    def __init__(self, case: Case):
        self.case = case
        kept = cache.load(case)
        if kept is None:
            self._evaluate, self._literal_values = _compile(case)
            cache.store(case, self._evaluate, self._literal_values)
        else:
            self._evaluate, self._literal_values = kept

    def __call__(self, inputs: dict[str, np.ndarray], conventions: KinkConventions, dtype: str) -> ReferenceGradient:
        flat = [float(v) for spec in self.case.tensors for v in np.asarray(inputs[spec.name], np.float64).ravel()]
        finfo = np.finfo(dtype)
        unit_roundoff = float(finfo.eps) / 2 + float(np.finfo(np.float64).eps) / 2
        with np.errstate(all="ignore"):
            outputs = self._evaluate(
                flat + self._literal_values, list(conventions.values()), unit_roundoff, float(finfo.smallest_normal)
            )
        outputs = np.asarray([np.asarray(o, dtype=np.float64).reshape(()) for o in outputs], dtype=np.float64)
        count = sum(spec.size for spec in self.case.variables)
        return ReferenceGradient(
            loss=float(outputs[0]),
            gradients=self._split(outputs[1 : 1 + count]),
            bounds=self._split(outputs[1 + count :]),
        )

    def _split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        result, start = {}, 0
        for spec in self.case.variables:
            result[spec.name] = flat[start : start + spec.size].reshape(spec.shape)
            start += spec.size
        return result


def _compile(case: Case) -> tuple[Callable, list[float]]:
    """The numpy function of (inputs and literals, conventions, unit roundoff, tiny) that returns the loss, every
    gradient element and every element's bound; and the literals' values."""
    symbols = {
        # identifiers as names ("w__3", unique since tensor names are identifiers): lambdify uses them as they are
        spec.name: np.array(
            [sp.Symbol(f"{spec.name}__{i}", real=True) for i in range(spec.size)], dtype=object
        ).reshape(spec.shape)
        for spec in case.tensors
    }
    target = symbolic.SymbolicTarget()
    loss = sp.sympify(np.asarray(lower(case.loss, target, symbols), dtype=object).item())
    variables = [symbol for name in case.variable_names for symbol in symbols[name].ravel()]
    gradients = [sp.diff(loss, symbol) for symbol in variables]
    bound, flushed = RoundingBound(target.constants, frozenset(target.float32_held)), FlushBound()
    bounds = [_sum_of(bound(gradient), flushed(gradient)) for gradient in gradients]
    inputs = [symbol for spec in case.tensors for symbol in symbols[spec.name].ravel()]
    arguments = [inputs + list(target.constants), list(symbolic.CONVENTION_SYMBOLS), UNIT_ROUNDOFF, TINY]
    modules = [symbolic.NUMPY_IMPLEMENTATIONS, "numpy"]
    evaluate = sp.lambdify(arguments, [loss, *gradients, *bounds], modules=modules, cse=_shared_subexpressions)
    return evaluate, list(target.constants.values())


def _shared_subexpressions(expressions: list[sp.Expr]):
    """Common subexpressions, each evaluated once (the loss, gradients and bounds share most of theirs); in the
    order found rather than SymPy's canonical order, whose sorting cost more than the rest of the compilation."""
    return sp.cse(expressions, order="none")


def _sum_of(*bounds: sp.Expr) -> sp.Expr:
    kept = [bound for bound in bounds if bound != 0]
    return sp.Add(*kept, evaluate=False) if len(kept) > 1 else (kept[0] if kept else sp.S.Zero)


@functools.lru_cache(maxsize=256)
def compiled_gradient(case: Case) -> CompiledGradient:
    """SymPy differentiation costs tenths of a second per case: do it once per case and process."""
    return CompiledGradient(case)


def exact_gradient(
    case: Case, inputs: dict[str, np.ndarray], conventions: KinkConventions, dtype: str
) -> ReferenceGradient:
    """The exact gradient at `inputs`, whose data may be one micro-batch of the case's."""
    shaped = shaped_like(case, {name: np.shape(value) for name, value in inputs.items()})
    return compiled_gradient(shaped)(inputs, conventions, dtype)


_reshaped: dict[tuple[int, tuple], Case] = {}


def shaped_like(case: Case, shapes: dict[str, tuple[int, ...]]) -> Case:
    """The case with its data tensors at `shapes` (one micro-batch), made once so that its compilation is cached."""
    if all(shapes[spec.name] == spec.shape for spec in case.data):
        return case
    key = (id(case), tuple(shapes[spec.name] for spec in case.data))
    if key not in _reshaped:
        data = tuple(dataclasses.replace(spec, shape=tuple(shapes[spec.name])) for spec in case.data)
        _reshaped[key] = dataclasses.replace(case, data=data)
    return _reshaped[key]


cache.seal_derivation()  # the digest of the derivation as imported (see cache.seal_derivation)
