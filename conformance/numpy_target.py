"""The expression language lowered to plain numpy: used to check shapes when a case is loaded.

It is not the reference (that is symbolic, in `conformance.reference`); it only has to agree with the
frameworks on shapes, broadcasting and axes.
"""

from __future__ import annotations

import numpy as np

from conformance.expressions import Node, OperatorTarget, lower

MAX_INTERMEDIATE_ELEMENTS = 4096  # the reference builds one SymPy expression per element of every intermediate


class TooLarge(ValueError):
    """Broadcasting makes the loss' intermediates too large for the reference to differentiate."""


class NumpyTarget(OperatorTarget):
    def sum(self, a, axis=None):
        return np.sum(a, axis=axis)

    def mean(self, a, axis=None):
        return np.mean(a, axis=axis)

    def logsumexp(self, a, axis=None):
        a = np.asarray(a)
        peak = np.max(a, axis=axis, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        total = np.sum(np.exp(a - peak), axis=axis, keepdims=True)
        return np.squeeze(np.log(total) + peak, axis=axis) if axis is not None else (np.log(total) + peak).reshape(())

    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    sqrt = staticmethod(np.sqrt)
    abs = staticmethod(np.abs)
    tanh = staticmethod(np.tanh)
    square = staticmethod(np.square)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)

    def sigmoid(self, a):
        return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(a)))

    def softplus(self, a):
        return np.logaddexp(0.0, a)

    def relu(self, a):
        return np.maximum(a, 0.0)


class _CountingTarget(NumpyTarget):
    """Counts the elements of every intermediate result, and stops once there are too many."""

    def __init__(self):
        self.elements = 0

    def _counted(self, result):
        self.elements += np.size(result)
        if self.elements > MAX_INTERMEDIATE_ELEMENTS:
            raise TooLarge(
                f"its intermediate results hold more than {MAX_INTERMEDIATE_ELEMENTS} elements "
                "(broadcasting); the reference cannot differentiate that in reasonable time"
            )
        return result

    def binary(self, op, left, right):
        return self._counted(super().binary(op, left, right))

    def call(self, function, args, axis):
        if axis is not None and np.ndim(args[0]) == 0:  # numpy reduces a 0-d value over axis 0 or -1; JAX and TF raise
            raise np.exceptions.AxisError(f"{function}: axis={axis} of a scalar, which has no axes")
        return self._counted(super().call(function, args, axis))


def result_shape(expression: Node, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of the expression's value; numpy's ValueError/IndexError when shapes do not fit, TooLarge when
    its intermediates hold more than MAX_INTERMEDIATE_ELEMENTS elements in all."""
    env = {name: np.ones(shape) for name, shape in shapes.items()}
    with np.errstate(all="ignore"):
        return np.shape(lower(expression, _CountingTarget(), env))
