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

    def cross_entropy(self, logits, targets, axis, label_smoothing, reduction):
        _check_loss_shapes("cross_entropy", logits, targets)
        if np.ndim(logits) < 2:
            raise ValueError("cross_entropy takes logits with an axis of examples and one of classes at least")
        per_example = -np.sum(targets * (logits - np.expand_dims(self.logsumexp(logits, axis=axis), axis)), axis=axis)
        return _reduced(per_example, reduction)

    def binary_cross_entropy_with_logits(self, logits, targets, reduction):
        _check_loss_shapes("binary_cross_entropy_with_logits", logits, targets)
        return _reduced(self.softplus(logits) - logits * targets, reduction)

    def binary_cross_entropy(self, probabilities, targets, reduction):
        _check_loss_shapes("binary_cross_entropy", probabilities, targets)
        return _reduced(-(targets * np.log(probabilities) + (1 - targets) * np.log1p(-probabilities)), reduction)

    def huber(self, predictions, targets, delta, reduction):
        _check_loss_shapes("huber", predictions, targets)
        error = np.abs(predictions - targets)
        return _reduced(np.where(error <= delta, 0.5 * error**2, delta * (error - 0.5 * delta)), reduction)

    def mse(self, predictions, targets, reduction):
        _check_loss_shapes("mse", predictions, targets)
        return _reduced((predictions - targets) ** 2, reduction)

    def kl_divergence(self, log_predictions, targets, reduction):
        _check_loss_shapes("kl_divergence", log_predictions, targets)
        return _reduced(np.sum(targets * (np.log(targets) - log_predictions), axis=-1), reduction)


def _check_loss_shapes(function: str, predictions, targets) -> None:
    """The frameworks' loss functions take predictions and targets of one shape, with an axis at least (torch warns
    and broadcasts where Keras and optax broadcast silently: a case does neither)."""
    if np.shape(predictions) != np.shape(targets):
        raise ValueError(
            f"{function} takes predictions and targets of one shape, not {list(np.shape(predictions))} and "
            f"{list(np.shape(targets))}"
        )
    if np.ndim(predictions) == 0:
        raise ValueError(f"{function} takes tensors with at least one axis, not scalars")


def _reduced(values, reduction: str):
    return np.sum(values) if reduction == "sum" else np.mean(values)


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

    def call(self, function, args, axis, options):
        if axis is not None and np.ndim(args[0]) == 0:  # numpy reduces a 0-d value over axis 0 or -1; JAX and TF raise
            raise np.exceptions.AxisError(f"{function}: axis={axis} of a scalar, which has no axes")
        if axis is not None and not -np.ndim(args[0]) <= axis < np.ndim(args[0]):
            raise np.exceptions.AxisError(f"{function}: axis={axis} of a value with {np.ndim(args[0])} axes")
        return self._counted(super().call(function, args, axis, options))


def result_shape(expression: Node, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The shape of the expression's value; numpy's ValueError/IndexError when shapes do not fit, TooLarge when
    its intermediates hold more than MAX_INTERMEDIATE_ELEMENTS elements in all."""
    env = {name: np.ones(shape) for name, shape in shapes.items()}
    with np.errstate(all="ignore"):
        return np.shape(lower(expression, _CountingTarget(), env))
