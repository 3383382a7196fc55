"""The gradient oracle against calculus done by hand and against 40-digit finite differences.

Every property test trusts `CompiledGradient`; if it were wrong, every backend would fail (or, worse, pass)
together. So it is checked here against derivatives written out by hand and against mpmath, and its rounding
bound is checked for being valid (it covers the oracle's own error) and tight enough to catch a 0.1% error.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import strategies
from conformance.backends.jax import JaxBackend
from conformance.backends.tensorflow import TensorFlowBackend
from conformance.backends.torch import TorchBackend
from conformance.cases import load_case
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import CompiledGradient

DEFAULT = KinkConventions()
U32, U64 = float(np.finfo(np.float32).eps) / 2, float(np.finfo(np.float64).eps) / 2
FEW = settings(max_examples=8, deadline=None, database=None)


@pytest.fixture(scope="module")
def compile_case(tmp_path_factory):
    """Case text -> CompiledGradient, compiled once per text (SymPy takes tenths of a second per case)."""
    directory, compiled = tmp_path_factory.mktemp("cases"), {}

    def compile_(text: str) -> CompiledGradient:
        if text not in compiled:
            path = directory / f"case{len(compiled)}.toml"
            path.write_text(text)
            compiled[text] = CompiledGradient(load_case(path))
        return compiled[text]

    return compile_


def tensor(name: str, shape: list[int], low: float, high: float, kind: str = "variables") -> str:
    return f"[{kind}.{name}]\nshape = {shape}\nrange = [{low!r}, {high!r}]\n"


def loss(expr: str) -> str:
    return f'[loss]\nexpr = "{expr}"\n'


SEED = tensor("x", [], -10.0, 10.0) + loss("(3 * x + 5 - 10) ** 2")


def grad(compiled: CompiledGradient, inputs: dict, conventions: KinkConventions = DEFAULT, dtype: str = "float64"):
    return compiled({name: np.asarray(value, dtype=np.float64) for name, value in inputs.items()}, conventions, dtype)


# ----------------------------------------------------------------------------------------------------- by hand


def test_the_seed_gradient_is_six(compile_case):
    # d/dx (3x + 5 - 10)^2 = 2 (3x - 5) * 3 = 6 (3x - 5), which is 6 at x = 2; the loss there is 1
    result = grad(compile_case(SEED), {"x": 2.0})
    assert result.loss == 1.0 and float(result.gradients["x"]) == 6.0


@FEW
@given(x=st.floats(-10, 10))
def test_the_seed_gradient_everywhere(compile_case, x):
    result = grad(compile_case(SEED), {"x": x})
    assert float(result.gradients["x"]) == pytest.approx(6 * (3 * x - 5), rel=1e-14, abs=1e-13)


@FEW
@given(w=st.lists(st.floats(-30, 30), min_size=4, max_size=4))
def test_logsumexp_differentiates_to_softmax(compile_case, w):
    # d/dw_i log sum_j exp(w_j) = exp(w_i) / sum_j exp(w_j)
    result = grad(compile_case(tensor("w", [4], -30.0, 30.0) + loss("logsumexp(w)")), {"w": w})
    exps = np.exp(np.asarray(w) - max(w))
    np.testing.assert_allclose(result.gradients["w"], exps / exps.sum(), rtol=1e-14, atol=1e-300)
    assert result.loss == pytest.approx(max(w) + math.log(exps.sum()), rel=1e-15)


def test_logsumexp_of_large_values_is_finite(compile_case):
    # logsumexp([1000, 999]) = 1000 + log(1 + e^-1); its gradient is softmax = [1, e^-1] / (1 + e^-1)
    result = grad(compile_case(tensor("w", [2], -2000.0, 2000.0) + loss("logsumexp(w)")), {"w": [1000.0, 999.0]})
    assert result.loss == pytest.approx(1000 + math.log1p(math.exp(-1)), rel=1e-15)
    softmax = np.array([1.0, math.exp(-1)]) / (1 + math.exp(-1))
    # computed as exp(w_i - logsumexp(w)): the rounding of logsumexp ~1000 costs ~1e-13, and the bound says so
    np.testing.assert_allclose(result.gradients["w"], softmax, rtol=1e-12)
    assert np.all(np.abs(result.gradients["w"] - softmax) <= result.bounds["w"])


@pytest.mark.parametrize(
    ("x", "loss_value", "slope"),
    [
        (0.0, math.log(2), 0.5),
        (2.0, math.log1p(math.exp(2)), 1 / (1 + math.exp(-2))),
        (-3.0, math.log1p(math.exp(-3)), 1 / (1 + math.exp(3))),
        (100.0, 100.0, 1.0),  # log(1 + e^100) = 100 + log(1 + e^-100): 100 in float64; exp(100) never formed
        (-100.0, math.exp(-100), math.exp(-100)),  # sigmoid(-100) = e^-100 / (1 + e^-100) = e^-100 in float64
    ],
)
def test_softplus_differentiates_to_sigmoid_without_overflow(compile_case, x, loss_value, slope):
    # d/dx log(1 + e^x) = e^x / (1 + e^x) = sigmoid(x)
    with np.errstate(all="raise"):
        result = grad(compile_case(tensor("x", [], -200.0, 200.0) + loss("softplus(x)")), {"x": x})
    assert result.loss == pytest.approx(loss_value, rel=1e-15)
    assert float(result.gradients["x"]) == pytest.approx(slope, rel=1e-14)
    assert math.isfinite(float(result.bounds["x"]))


def test_softplus_linear_above_a_threshold_is_exactly_linear(compile_case):
    """torch's softplus returns x, with slope exactly 1, above its threshold (20): the reference follows."""
    result = grad(
        compile_case(tensor("x", [], -200.0, 200.0) + loss("softplus(x)")),
        {"x": 30.0},
        KinkConventions(softplus_linear_above=20.0),
    )
    assert (result.loss, float(result.gradients["x"]), float(result.bounds["x"])) == (30.0, 1.0, 0.0)


@FEW
@given(data=st.data())
def test_mean_squared_error_gradient_is_the_normal_equations(compile_case, data):
    # d/dw mean((a w - 1)^2) = (2 / n) a^T (a w - 1), with n the number of rows of a
    compiled = compile_case(
        tensor("w", [3], -3.0, 3.0) + tensor("a", [6, 3], -2.0, 2.0, "data") + loss("mean((a @ w - 1) ** 2)")
    )
    inputs = data.draw(strategies.inputs(compiled.case, "float64"), label="inputs")
    a, w = inputs["a"], inputs["w"]
    expected = 2 / 6 * a.T @ (a @ w - 1)
    result = grad(compiled, inputs)
    np.testing.assert_allclose(result.gradients["w"], expected, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(result.gradients["w"] - expected) <= result.bounds["w"])


BACKEND_CONVENTIONS = {
    "default": DEFAULT,
    "torch": TorchBackend.conventions,  # importing an adapter does not import its framework
    "jax": JaxBackend.conventions,
    "tensorflow": TensorFlowBackend.conventions,
    "slope -1": KinkConventions(abs_slope_at_zero=-1.0),
}


@pytest.mark.parametrize("conventions", BACKEND_CONVENTIONS.values(), ids=BACKEND_CONVENTIONS.keys())
def test_abs_and_relu_at_zero_follow_the_convention(compile_case, conventions):
    # d|w|/dw = sign(w), with the convention's slope at 0; d relu(w)/dw = 1 above 0, 0 at and below 0
    compiled = compile_case(tensor("w", [3], -2.0, 2.0) + loss("sum(abs(w)) + sum(relu(w))"))
    result = grad(compiled, {"w": [0.0, 1.5, -1.5]}, conventions)
    assert result.gradients["w"].tolist() == [conventions.abs_slope_at_zero, 2.0, -1.0]


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_maximum_and_minimum_split_ties_by_the_convention(compile_case, share):
    # at a tie a == b, d max(a, b) goes `share` to a and 1 - share to b; off a tie, all to the larger one
    compiled = compile_case(
        tensor("a", [3], -2.0, 2.0) + tensor("b", [3], -2.0, 2.0) + loss("sum(maximum(a, b)) + 10 * sum(minimum(a, b))")
    )
    conventions = KinkConventions(maximum_tie_to_first=share, minimum_tie_to_first=share)
    result = grad(compiled, {"a": [1.0, 1.0, -1.0], "b": [1.0, 0.0, 0.0]}, conventions)
    assert result.gradients["a"].tolist() == [share + 10 * share, 1.0, 10.0]
    assert result.gradients["b"].tolist() == [(1 - share) * 11, 10.0, 1.0]


# ----------------------------------------------------------------------------------- 40-digit finite differences


def mp_sigmoid(v):
    return 1 / (1 + mpmath.exp(-v))


def mp_softplus(v):
    return mpmath.log(1 + mpmath.exp(v))


def mp_logsumexp(values):
    return mpmath.log(mpmath.fsum(mpmath.exp(v) for v in values))


def mp_matvec(matrix, vector):
    return [mpmath.fsum(m * v for m, v in zip(row, vector, strict=True)) for row in matrix]


# each: case text, and the same loss evaluated by hand in mpmath from nested lists of mpf
BY_HAND = {
    "tanh layer": (
        tensor("w", [2], -2.0, 2.0)
        + tensor("a", [3, 2], -1.0, 1.0, "data")
        + loss("logsumexp(tanh(a @ w)) + mean(softplus(w) * sigmoid(w))"),
        lambda w, a: (
            mp_logsumexp([mpmath.tanh(v) for v in mp_matvec(a, w)])
            + mpmath.fsum(mp_softplus(v) * mp_sigmoid(v) for v in w) / 2
        ),
    ),
    "scalar powers": (
        tensor("x", [], 0.5, 3.0) + loss("(3 * x + 5 - 10) ** 2 + x ** -2 + sqrt(x) * log(x) - exp(-x) / 3"),
        lambda x: (3 * x + 5 - 10) ** 2 + x**-2 + mpmath.sqrt(x) * mpmath.log(x) - mpmath.exp(-x) / 3,
    ),
    "matrix variable": (
        tensor("W", [2, 3], -2.0, 2.0)
        + tensor("x", [3], -1.0, 1.0, "data")
        + tensor("y", [2], -1.0, 1.0, "data")
        + loss("sum(square(W @ x - y)) + sum(logsumexp(W, axis=1)) + mean(abs(W) ** 3)"),
        lambda W, x, y: (
            mpmath.fsum((v - t) ** 2 for v, t in zip(mp_matvec(W, x), y, strict=True))
            + mpmath.fsum(mp_logsumexp(row) for row in W)
            + mpmath.fsum(abs(v) ** 3 for row in W for v in row) / 6
        ),
    ),
}


def mp_tree(array: np.ndarray):
    """A float64 array as nested lists of exact mpf values."""
    return mpmath.mpf(float(array)) if array.ndim == 0 else [mp_tree(item) for item in array]


def central_differences(function, inputs: dict[str, np.ndarray], variables: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(f(v + h) - f(v - h)) / 2h at 40 digits, h = 1e-15: truncation ~h^2, cancellation ~1e-40 / h, both < 1e-24."""
    with mpmath.workdps(40):
        step = mpmath.mpf("1e-15")
        result = {}
        for name in variables:
            slopes = np.empty(inputs[name].shape)
            for index in np.ndindex(inputs[name].shape):
                sides = []
                for sign in (1, -1):
                    shifted = {key: mp_tree(value) for key, value in inputs.items()}
                    if index:
                        row = shifted[name]
                        for i in index[:-1]:
                            row = row[i]
                        row[index[-1]] += sign * step
                    else:
                        shifted[name] += sign * step
                    sides.append(function(**shifted))
                slopes[index] = float((sides[0] - sides[1]) / (2 * step))
            result[name] = slopes
    return result


@pytest.mark.parametrize("name", BY_HAND)
@FEW
@given(data=st.data())
def test_matches_high_precision_finite_differences(compile_case, name, data):
    text, function = BY_HAND[name]
    compiled = compile_case(text)
    inputs = data.draw(strategies.inputs(compiled.case, "float64"), label="inputs")
    result = grad(compiled, inputs)
    exact = central_differences(function, inputs, compiled.case.variable_names)
    for variable, slopes in exact.items():
        error = np.abs(result.gradients[variable] - slopes)
        assert np.all(error <= 1e-12 * np.maximum(1.0, np.abs(slopes))), (variable, result.gradients[variable], slopes)
        assert np.all(error <= result.bounds[variable] + 1e-20), "the float64 bound must cover the oracle's own error"


# ------------------------------------------------------------------------------------------------ the bound


def test_the_bound_is_positive_and_small_enough_to_catch_a_tenth_of_a_percent(compile_case):
    compiled = compile_case(SEED)
    for dtype in ("float32", "float64"):
        result = grad(compiled, {"x": 2.0}, dtype=dtype)
        gradient, bound = float(result.gradients["x"]), float(result.bounds["x"])
        assert 0 < bound < 1e-2 * 1e-3 * abs(gradient), dtype  # a 0.1% error is 100 bounds away


def test_the_float64_bound_is_smaller_by_the_ratio_of_unit_roundoffs(compile_case):
    """The bound uses u(dtype) + u(float64), covering the oracle's own float64 rounding as well, so the ratio
    float32 : float64 is (2^-24 + 2^-53) / 2^-52 = 2^28 + 1/2, not the 2^29 between the bare unit roundoffs."""
    compiled = compile_case(SEED)
    for x in (2.0, -1.5, 7.25):
        f32 = float(grad(compiled, {"x": x}, dtype="float32").bounds["x"])
        f64 = float(grad(compiled, {"x": x}, dtype="float64").bounds["x"])
        assert f32 / f64 == pytest.approx((U32 + U64) / (2 * U64), rel=1e-6)
        assert 2**28 <= f32 / f64 < 2**29
