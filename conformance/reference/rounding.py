"""A first-order bound on the rounding error of evaluating an expression in floating point.

Rules (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3, running error analysis), with u the
unit roundoff and `tiny` the absolute error of a result that underflows (flush-to-zero included):
    inputs are exact;                         a constant c that is not a small integer: u|c|
                                              (the source's literals are symbols: `inexact_literals`)
    a sum of n terms, in any order:           sum of the terms' bounds + (n - 1) (u sum|t| + tiny)
    a sum of two exact terms:                 u|a + b| (one rounding; x - y is exact when x == y)
    a product p*a:                            |p| b(a) + |a| b(p) + u|pa| + tiny
    x ** k:                                   |k x^(k-1)| b(x) + max(1, |k|) (u|x^k| + tiny)
    f(a, ...) smooth:                         sum |df/da| b(a) + c_f (u|f| + tiny), c_f = 4 ulps for
                                              library transcendentals (float32 kernels are not all
                                              correctly rounded), 0 for exact ones (abs, relu, max, min)
    a piecewise definition:                   the bound of the branch taken
    a step or sign at a kink:                 its jump, where the argument is within its own bound of the
                                              kink, else 0 (so exact ties are judged by convention, not bound)
Summing with |t| rather than |sum| covers any order of summation and the reassociation that reverse-mode
differentiation brings; this is what makes the bound hold for the frameworks' formulas as well as ours.

Flush-to-zero (XLA on CPU, oneDNN) needs one rule more, since reassociation decides which intermediates are
subnormal: reverse mode computes (v / 6) (1 - tanh(z)^2) where the formula reads (1 / 6) sum(v a (1 - tanh^2)), and
a partial product below the smallest normal number is lost whole. `FlushBound` adds, for every operation, `tiny`
times the largest factor that can follow it in any order: for a product of f_1..f_k, a flushed partial product
loses less than tiny, then multiplied by the other factors, at most prod max(1, |f_j|); an enclosing product carries
a factor's allowance by max(1, |co-factors|), never shrinking it by a factor below 1 that a framework may have
applied first. Far from underflow this allowance is negligible beside u |x|; near it, it is what flushing can cost.
"""

from __future__ import annotations

import sympy as sp

from conformance.reference import symbolic

UNIT_ROUNDOFF = sp.Symbol("unit_roundoff", positive=True)
TINY = sp.Symbol("tiny", positive=True)
TRANSCENDENTAL_ULPS = 4
EXACT_INTEGER_LIMIT = 2**24


def _abs(expr: sp.Expr) -> sp.Expr:
    return expr if expr.is_Number and expr >= 0 else sp.Abs(expr, evaluate=False)


def _sum(terms: list[sp.Expr]) -> sp.Expr:
    kept = [term for term in terms if term != 0]
    if not kept:
        return sp.S.Zero
    return kept[0] if len(kept) == 1 else sp.Add(*kept, evaluate=False)


def _product(*factors: sp.Expr) -> sp.Expr:
    if any(factor == 0 for factor in factors):
        return sp.S.Zero
    kept = [factor for factor in factors if factor != 1]
    if not kept:
        return sp.S.One
    return kept[0] if len(kept) == 1 else sp.Mul(*kept, evaluate=False)


def _exact(value) -> bool:
    """Small integers and halves are exact in every float format under test."""
    return float(value * 2).is_integer() and abs(value) <= EXACT_INTEGER_LIMIT


def _rounding(value: sp.Expr, ulps: float = 1) -> sp.Expr:
    return _product(sp.Float(ulps), _sum([_product(UNIT_ROUNDOFF, _abs(value)), TINY]))


FLOAT32_UNIT_ROUNDOFF = 2.0**-24


class RoundingBound:
    """Builds bound expressions for many expressions that share subexpressions (memoised). A literal in
    `float32_held` may be held as a float32 whatever the dtype (a framework's C++ `float` constant): its bound is
    float32's rounding, on top of the dtype's."""

    def __init__(self, literals: dict[sp.Symbol, float], float32_held: frozenset[sp.Symbol] = frozenset()):
        self.memo: dict[sp.Expr, sp.Expr] = {
            symbol: sp.S.Zero if _exact(value) else _product(UNIT_ROUNDOFF, sp.Float(abs(value)))
            for symbol, value in literals.items()
        }
        for symbol in float32_held:
            self.memo[symbol] = _product(
                _sum([UNIT_ROUNDOFF, sp.Float(FLOAT32_UNIT_ROUNDOFF)]), sp.Float(abs(literals[symbol]))
            )

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if expr not in self.memo:
            self.memo[expr] = self._bound(expr)
        return self.memo[expr]

    def _bound(self, expr: sp.Expr) -> sp.Expr:
        if expr.is_Symbol:
            return sp.S.Zero
        if expr.is_Number:
            return sp.S.Zero if _exact(expr) else _product(UNIT_ROUNDOFF, _abs(expr))
        if expr.is_Add:
            terms = expr.args
            if len(terms) == 2 and self(terms[0]) == 0 and self(terms[1]) == 0:
                return _product(UNIT_ROUNDOFF, _abs(expr))  # one rounding of an exact sum; no underflow in sums
            return _sum(
                [self(term) for term in terms]
                + [
                    _product(
                        sp.Integer(len(terms) - 1),
                        _sum([_product(UNIT_ROUNDOFF, _sum([_abs(t) for t in terms])), TINY]),
                    )
                ]
            )
        if expr.is_Mul:
            return self._product_bound(expr.args)
        if expr.is_Pow:
            return self._power_bound(*expr.args)
        if isinstance(expr, sp.Piecewise):  # the branch taken is the framework's documented choice
            return sp.Piecewise(*[(self(branch), condition) for branch, condition in expr.args])
        if isinstance(expr, (symbolic.Step, symbolic.SignAtZero)):
            return self._jump_bound(expr)
        if isinstance(expr, sp.Function):
            return self._function_bound(expr)
        raise TypeError(f"no rounding rule for {type(expr).__name__}")

    def _product_bound(self, factors: tuple[sp.Expr, ...]) -> sp.Expr:
        if len(factors) == 2 and factors[0] == -1:
            return self(factors[1])  # negation is exact
        partial, bound = factors[0], self(factors[0])
        for factor in factors[1:]:
            bound = _sum(
                [
                    _product(_abs(partial), self(factor)),
                    _product(_abs(factor), bound),
                    _rounding(sp.Mul(partial, factor, evaluate=False)),
                ]
            )
            partial = sp.Mul(partial, factor, evaluate=False)
        return bound

    def _power_bound(self, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
        if not exponent.is_Number:
            raise TypeError("the reference has only constant exponents")
        slope = _abs(exponent * base ** (exponent - 1))
        ulps = max(1, abs(float(exponent))) if exponent.is_Integer else 2
        return _sum([_product(slope, self(base)), _rounding(base**exponent, ulps)])

    def _function_bound(self, expr: sp.Function) -> sp.Expr:
        propagated = [_product(_abs(expr.fdiff(index + 1)), self(arg)) for index, arg in enumerate(expr.args)]
        ulps = 0 if isinstance(expr, symbolic.EXACT_FUNCTIONS) else TRANSCENDENTAL_ULPS
        return _sum(propagated + ([_rounding(expr, ulps)] if ulps else []))

    def _jump_bound(self, expr: sp.Expr) -> sp.Expr:
        if isinstance(expr, symbolic.Step):
            left, right, _ = expr.args
            distance, jump = left - right, sp.S.One
            argument_bound = _sum([self(left), self(right)])
        else:
            distance, jump = expr.args[0], sp.Integer(2)
            argument_bound = self(expr.args[0])
        if argument_bound == 0:
            return sp.S.Zero
        return sp.Piecewise((jump, sp.StrictLessThan(_abs(distance), argument_bound)), (0, True))


def _growth(factors) -> sp.Expr:
    """prod max(1, |f|): the most that any subset of the factors can multiply an error by."""
    return _product(*[sp.S.One if f.is_Number and abs(f) <= 1 else symbolic.AtLeastOne(_abs(f)) for f in factors])


class FlushBound:
    """The absolute error that flushing subnormal intermediates to zero can cause, in any association (memoised)."""

    def __init__(self) -> None:
        self.memo: dict[sp.Expr, sp.Expr] = {}

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if expr not in self.memo:
            self.memo[expr] = self._bound(expr)
        return self.memo[expr]

    def _bound(self, expr: sp.Expr) -> sp.Expr:
        if expr.is_Symbol or expr.is_Number:
            return sp.S.Zero
        if expr.is_Add:
            return _sum([self(term) for term in expr.args] + [_product(sp.Integer(len(expr.args) - 1), TINY)])
        if expr.is_Mul:
            factors = [f for f in expr.args if f != -1]
            allowances = _sum([self(f) for f in factors] + [_product(sp.Integer(max(1, len(factors) - 1)), TINY)])
            return _product(allowances, _growth(factors))
        if expr.is_Pow:
            base, exponent = expr.args
            return _sum(
                [
                    _product(_abs(exponent * base ** (exponent - 1)), self(base)),
                    _product(sp.Float(max(1, abs(float(exponent)))), TINY),
                ]
            )
        if isinstance(expr, sp.Piecewise):
            return sp.Piecewise(*[(self(branch), condition) for branch, condition in expr.args])
        if isinstance(expr, (symbolic.Step, symbolic.SignAtZero)):
            return sp.S.Zero
        if isinstance(expr, sp.Function):  # exact functions return an input or zero: they make no new subnormal
            created = [] if isinstance(expr, symbolic.EXACT_FUNCTIONS) else [TINY]
            return _sum(
                [_product(_abs(expr.fdiff(index + 1)), self(arg)) for index, arg in enumerate(expr.args)] + created
            )
        raise TypeError(f"no flush rule for {type(expr).__name__}")
