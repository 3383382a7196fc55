"""The expression language lowered to SymPy, element by element, with the frameworks' kink conventions as symbols.

Every tensor element is a real SymPy symbol, so that differentiation is exact and done once per case.
Functions whose float64 evaluation would overflow or whose derivative has a kink are SymPy functions of
their own: their derivatives are stated here (softplus' = sigmoid, logsumexp' = softmax, relu' = step) and
their numeric forms (`NUMPY_IMPLEMENTATIONS`) are the stable ones.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from conformance.expressions import OperatorTarget

# The conventions at kinks and ties differ between frameworks; they enter the reference as symbols.
ABS_SLOPE_AT_ZERO = sp.Symbol("abs_slope_at_zero", real=True)
MAXIMUM_TIE_TO_FIRST = sp.Symbol("maximum_tie_to_first", real=True)
MINIMUM_TIE_TO_FIRST = sp.Symbol("minimum_tie_to_first", real=True)
SOFTPLUS_LINEAR_ABOVE = sp.Symbol("softplus_linear_above", real=True)
# and the loss functions' small print (conventions.KinkConventions says what each means)
PROBABILITY_CLIP = sp.Symbol("probability_clip", real=True)
SMOOTHING_CLASSES_LAST_AXIS = sp.Symbol("smoothing_classes_last_axis", real=True)
KL_MEAN_OVER_FIRST_AXIS = sp.Symbol("kl_mean_over_first_axis", real=True)
SUM_OF_ROW_MEANS = sp.Symbol("sum_of_row_means", real=True)
CROSS_ENTROPY_NORMALIZED_TARGETS = sp.Symbol("cross_entropy_normalized_targets", real=True)
CONVENTION_SYMBOLS = (
    ABS_SLOPE_AT_ZERO,
    MAXIMUM_TIE_TO_FIRST,
    MINIMUM_TIE_TO_FIRST,
    SOFTPLUS_LINEAR_ABOVE,
    PROBABILITY_CLIP,
    SMOOTHING_CLASSES_LAST_AXIS,
    KL_MEAN_OVER_FIRST_AXIS,
    SUM_OF_ROW_MEANS,
    CROSS_ENTROPY_NORMALIZED_TARGETS,
)
TORCH_LOG_FLOOR = -100.0  # binary_cross_entropy's clamp of log(p) and log(1 - p) (aten/src/ATen/native/Loss.cpp)
# the floor of p (1 - p) in its backward (the same file); measured in float64 runs: eager torch floors at
# float32(1e-12) = 9.99999996e-13 (a C++ float), torch.compile's decomposition at the double 1e-12
TORCH_BCE_EPSILON = 1e-12


class Step(sp.Function):
    """Step(a, b, tie): 1 where a > b, 0 where a < b, `tie` where they are equal; a derivative, never differentiated."""

    nargs = 3

    def fdiff(self, argindex=1):
        return sp.S.Zero


class SignAtZero(sp.Function):
    """sign(a), with the value at 0 given as the second argument (the slope of abs at its kink)."""

    nargs = 2

    def fdiff(self, argindex=1):
        return sp.S.Zero


class Absolute(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        return SignAtZero(self.args[0], ABS_SLOPE_AT_ZERO)


class Relu(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        return Step(self.args[0], sp.S.Zero, sp.S.Zero)


class Sigmoid(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        return self * (1 - self)


class Softplus(sp.Function):
    nargs = 1

    def fdiff(self, argindex=1):
        # sigmoid(x), written as JAX differentiates logaddexp: exp(x - softplus(x)); the same value, but its
        # rounding bound then carries softplus' own error, which that formula amplifies by |softplus(x)|
        return sp.exp(self.args[0] - self)


class Maximum(sp.Function):
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        if argindex == 1:
            return Step(a, b, MAXIMUM_TIE_TO_FIRST)
        return Step(b, a, 1 - MAXIMUM_TIE_TO_FIRST)


class Minimum(sp.Function):
    nargs = 2

    def fdiff(self, argindex=1):
        a, b = self.args
        if argindex == 1:
            return Step(b, a, MINIMUM_TIE_TO_FIRST)
        return Step(a, b, 1 - MINIMUM_TIE_TO_FIRST)


class LogSumExp(sp.Function):
    """log(sum(exp(args))) over any number of scalar arguments."""

    def fdiff(self, argindex=1):
        return sp.exp(self.args[argindex - 1] - self)


class TorchBinaryCrossEntropy(sp.Function):
    """torch's binary_cross_entropy(p, t) with its backward's floor `epsilon`: the log clamped at -100, and a
    gradient of its own, (p - t) / max(p (1 - p), epsilon), which is not the clamped log's derivative (at p = 0 and
    t = 1 it is -1e12, where the clamp is flat)."""

    nargs = 3

    def fdiff(self, argindex=1):
        p, t, epsilon = self.args
        if argindex == 1:
            return (p - t) * Maximum((1 - p) * p, epsilon) ** -1
        if argindex == 2:  # the targets are data (cases.py): this only weighs their bound, which is 0
            return sp.log(1 - p) - sp.log(p)
        return sp.S.Zero


def _torch_binary_cross_entropy(p, t, epsilon):
    with np.errstate(divide="ignore"):
        return -(t * np.maximum(np.log(p), TORCH_LOG_FLOOR) + (1 - t) * np.maximum(np.log1p(-p), TORCH_LOG_FLOOR))


def _step(a, b, tie):
    return np.where(a > b, 1.0, np.where(a < b, 0.0, tie))


class AtLeastOne(sp.Function):
    """max(1, x) for a bound, which is never differentiated: unlike sp.Max, it is not simplified each time SymPy
    rebuilds an expression (which made most of the reference's compilation time)."""

    nargs = 1


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _logsumexp(*args):
    values = np.array(args, dtype=np.float64)
    peak = np.max(values)
    if not np.isfinite(peak):
        return peak
    return peak + np.log(np.sum(np.exp(values - peak)))


NUMPY_IMPLEMENTATIONS = {
    "Step": _step,
    "SignAtZero": lambda x, at_zero: np.where(x > 0, 1.0, np.where(x < 0, -1.0, at_zero)),
    "Absolute": np.abs,
    "Relu": lambda x: np.maximum(x, 0.0),
    "Sigmoid": _sigmoid,
    "Softplus": lambda x: np.logaddexp(0.0, x),
    "Maximum": np.maximum,
    "Minimum": np.minimum,
    "LogSumExp": _logsumexp,
    "AtLeastOne": lambda x: np.maximum(1.0, x),
    "TorchBinaryCrossEntropy": _torch_binary_cross_entropy,
}

EXACT_FUNCTIONS = (Step, SignAtZero, Absolute, Relu, Maximum, Minimum)


def _elementwise(function):
    vectorized = np.vectorize(function, otypes=[object])
    return lambda *arrays: vectorized(*arrays)


class SymbolicTarget(OperatorTarget):
    """Lowering onto numpy object arrays of SymPy expressions: shapes and broadcasting come from numpy.

    Each literal of the source becomes a symbol of its own (its value is an input of the compiled function), so
    that SymPy cannot fold `x + 5 - 10` into `x - 5`: the frameworks compute the sum as written, and its rounding
    error depends on the terms, not on the folded result.
    """

    def __init__(self):
        self.constants: dict[sp.Symbol, float] = {}
        self.float32_held: set[sp.Symbol] = set()  # see rounding.RoundingBound

    def constant(self, value: float, float32_held: bool = False):
        symbol = sp.Symbol(f"literal{len(self.constants)}", real=True)
        self.constants[symbol] = float(value)
        if float32_held:
            self.float32_held.add(symbol)
        return symbol

    def binary(self, op, left, right):
        if op == "**":
            exponent = sp.Integer(int(right)) if float(right).is_integer() else sp.Rational(right)
            return _elementwise(lambda base: base**exponent)(np.asarray(left, dtype=object))
        if op == "@":
            return np.matmul(np.asarray(left, dtype=object), np.asarray(right, dtype=object))
        return super().binary(op, left, right)

    def sum(self, a, axis=None):
        return np.sum(np.asarray(a, dtype=object), axis=axis)

    def mean(self, a, axis=None):
        a = np.asarray(a, dtype=object)
        count = a.size if axis is None else a.shape[axis]
        return np.sum(a, axis=axis) * sp.Rational(1, count)

    def logsumexp(self, a, axis=None):
        a = np.asarray(a, dtype=object)
        if axis is None:
            return LogSumExp(*a.ravel())
        return np.apply_along_axis(lambda row: LogSumExp(*row), axis, a)

    exp = staticmethod(_elementwise(sp.exp))
    log = staticmethod(_elementwise(sp.log))
    sqrt = staticmethod(_elementwise(sp.sqrt))
    abs = staticmethod(_elementwise(Absolute))
    tanh = staticmethod(_elementwise(sp.tanh))
    sigmoid = staticmethod(_elementwise(Sigmoid))
    softplus = staticmethod(_elementwise(lambda x: sp.Piecewise((x, x > SOFTPLUS_LINEAR_ABOVE), (Softplus(x), True))))
    relu = staticmethod(_elementwise(Relu))
    square = staticmethod(_elementwise(lambda x: x**2))
    maximum = staticmethod(_elementwise(Maximum))
    minimum = staticmethod(_elementwise(Minimum))

    # The frameworks' loss functions, from primitives, their small print as the convention symbols choose it.
    def cross_entropy(self, logits, targets, axis, label_smoothing, reduction):
        logits, targets = np.asarray(logits, dtype=object), np.asarray(targets, dtype=object)
        axis %= logits.ndim
        if label_smoothing:
            classes = _either(SMOOTHING_CLASSES_LAST_AXIS, logits.shape[-1], logits.shape[axis])
            smoothing = self.constant(label_smoothing)
            targets = targets * (1 - smoothing) + smoothing * classes**-1
        log_normalizer = np.apply_along_axis(lambda row: LogSumExp(*row), axis, logits)
        # -sum(t (z - lse)) = sum(t) lse - sum(t z); a framework whose gradient takes sum(t) to be 1 differentiates
        # lse - sum(t z) (its value is the same where the targets are probabilities)
        weight = _either(CROSS_ENTROPY_NORMALIZED_TARGETS, 1, np.sum(targets, axis=axis))
        per_example = weight * log_normalizer - np.sum(targets * logits, axis=axis)
        return self._reduced(per_example, reduction, per_example.size)

    def binary_cross_entropy_with_logits(self, logits, targets, reduction):
        return self._elementwise_loss(_elementwise(lambda x, t: Softplus(x) - x * t)(logits, targets), reduction)

    def binary_cross_entropy(self, probabilities, targets, reduction):
        epsilon = self.constant(TORCH_BCE_EPSILON, float32_held=True)

        def loss(p, t):
            clipped = Minimum(Maximum(p, PROBABILITY_CLIP), 1 - PROBABILITY_CLIP)
            clipped_loss = -(t * sp.log(clipped) + (1 - t) * sp.log(1 - clipped))
            return sp.Piecewise((clipped_loss, PROBABILITY_CLIP > 0), (TorchBinaryCrossEntropy(p, t, epsilon), True))

        return self._elementwise_loss(_elementwise(loss)(probabilities, targets), reduction)

    def huber(self, predictions, targets, delta, reduction):
        delta = self.constant(delta)

        def loss(p, t):  # optax's form: the same function, and the rounding rules see where the branches meet
            error = Absolute(p - t)
            quadratic = Minimum(error, delta)
            return sp.Rational(1, 2) * quadratic**2 + delta * (error - quadratic)

        return self._elementwise_loss(_elementwise(loss)(predictions, targets), reduction)

    def mse(self, predictions, targets, reduction):
        return self._elementwise_loss(_elementwise(lambda p, t: (p - t) ** 2)(predictions, targets), reduction)

    def kl_divergence(self, log_predictions, targets, reduction):
        def loss(log_p, t):
            clipped_t = Minimum(Maximum(t, PROBABILITY_CLIP), 1)
            clipped_p = Minimum(Maximum(sp.exp(log_p), PROBABILITY_CLIP), 1)
            clipped_loss = clipped_t * sp.log(clipped_t * clipped_p**-1)
            return sp.Piecewise((clipped_loss, PROBABILITY_CLIP > 0), (t * sp.log(t) - t * log_p, True))

        per_example = np.sum(_elementwise(loss)(log_predictions, targets), axis=-1)
        shape = np.shape(log_predictions)
        examples = _either(KL_MEAN_OVER_FIRST_AXIS, shape[0], int(np.prod(shape[:-1])))
        return self._reduced(per_example, reduction, examples)

    def _elementwise_loss(self, losses, reduction):
        """The mean over every element; or the sum, which Keras takes of the means over the last axis."""
        losses = np.asarray(losses, dtype=object)
        return self._reduced(losses, reduction, losses.size, sum_divisor=_either(SUM_OF_ROW_MEANS, losses.shape[-1], 1))

    @staticmethod
    def _reduced(losses, reduction, count, sum_divisor=1):
        total = np.sum(np.asarray(losses, dtype=object))
        divisor = sum_divisor if reduction == "sum" else count
        return total if divisor == 1 else total * sp.sympify(divisor) ** -1


def _either(flag: sp.Symbol, if_set, otherwise):
    """`if_set` where the convention flag is 1, else `otherwise` (elementwise over arrays): a constant where the two
    are the same integer."""
    if isinstance(if_set, int) and isinstance(otherwise, int) and if_set == otherwise:
        return if_set
    return flag * if_set + (1 - flag) * otherwise
