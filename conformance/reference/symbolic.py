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
CONVENTION_SYMBOLS = (ABS_SLOPE_AT_ZERO, MAXIMUM_TIE_TO_FIRST, MINIMUM_TIE_TO_FIRST, SOFTPLUS_LINEAR_ABOVE)


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

    def constant(self, value: float):
        symbol = sp.Symbol(f"literal{len(self.constants)}", real=True)
        self.constants[symbol] = float(value)
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
