"""Hypothesis strategies drawn from a case's declarations: values representable in the dtype under test."""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conformance.cases import Case, HyperParameter, TensorSpec


def representable_range(low: float, high: float, dtype: str) -> tuple[float, float]:
    """The closed range rounded inwards to values of `dtype`, so that every draw lies in the declared range."""
    kind = np.dtype(dtype).type
    low_in, high_in = kind(low), kind(high)
    if float(low_in) < low:
        low_in = np.nextafter(low_in, kind(np.inf))
    if float(high_in) > high:
        high_in = np.nextafter(high_in, kind(-np.inf))
    return float(low_in), float(high_in)


def tensor(spec: TensorSpec, dtype: str) -> st.SearchStrategy[np.ndarray]:
    if spec.value is not None:
        return st.just(spec.value.astype(dtype))
    low, high = representable_range(*spec.range, dtype)
    # No subnormal inputs: XLA on CPU, and TensorFlow with oneDNN, flush them to zero (FTZ/DAZ), a property of
    # the platform rather than of differentiation; exact zeros, range ends and kinks are still drawn.
    elements = st.floats(
        low, high, width=np.dtype(dtype).itemsize * 8, allow_nan=False, allow_infinity=False, allow_subnormal=False
    )
    return hnp.arrays(dtype, spec.shape, elements=elements)


@functools.lru_cache(maxsize=512)
def inputs(case: Case, dtype: str) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """Every variable and data tensor of the case, as numpy arrays of `dtype` (built once: Hypothesis validates a
    strategy on its first draw, which costs as much as drawing)."""
    return st.fixed_dictionaries({spec.name: tensor(spec, dtype) for spec in case.tensors})


def hyperparameter(spec: HyperParameter) -> st.SearchStrategy[float | bool]:
    if spec.range is None:
        return st.just(spec.value)
    low, high = spec.range
    if spec.log:  # lr, eps, weight decay span decades: draw the exponent
        return st.floats(math.log(low), math.log(high)).map(lambda e: min(max(math.exp(e), low), high))
    return st.floats(low, high, allow_subnormal=False)


@functools.lru_cache(maxsize=512)
def hyperparameters(case: Case) -> st.SearchStrategy[dict[str, float | bool]]:
    """The case's canonical hyperparameters; those it leaves out stay each framework's default."""
    return st.fixed_dictionaries({name: hyperparameter(spec) for name, spec in case.update.hyperparameters.items()})
