"""The reference's loss functions against gradients derived by hand, under each framework's small print.

Each expected value below is worked out on paper from the framework's documented formula (the comments give
the arithmetic); the reference builds the same functions from primitives in `reference/symbolic.py`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conformance.backends.jax import JaxBackend
from conformance.backends.tensorflow import TensorFlowBackend
from conformance.backends.torch import TorchBackend
from conformance.cases import load_case
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import CompiledGradient

OPTAX, TORCH, TF_KERAS = JaxBackend.conventions, TorchBackend.conventions, TensorFlowBackend.conventions


@pytest.fixture(scope="module")
def gradient_of(tmp_path_factory):
    """(expr, variable values, data values) -> a function of conventions giving the variable p's gradient."""
    directory, compiled = tmp_path_factory.mktemp("loss-cases"), {}

    def gradient(expr: str, p, y, dtype: str = "float64"):
        text = f"[variables.p]\nvalue = {np.asarray(p).tolist()}\n[data.y]\nvalue = {np.asarray(y).tolist()}\n"
        text += f'[loss]\nexpr = "{expr}"\n'
        if text not in compiled:
            path = directory / f"case{len(compiled)}.toml"
            path.write_text(text)
            compiled[text] = CompiledGradient(load_case(path))
        inputs = {"p": np.asarray(p, np.float64), "y": np.asarray(y, np.float64)}
        return lambda conventions: compiled[text](inputs, conventions, dtype)

    return gradient


def test_mse_mean_and_sum(gradient_of):
    p, y = [[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]
    # d/dp mean((p - y)^2) = 2 (p - y) / 4
    assert np.allclose(gradient_of("mse(p, y)", p, y)(TORCH).gradients["p"], np.asarray(p) / 2, rtol=1e-15)
    summed = gradient_of("mse(p, y, reduction='sum')", p, y)
    assert np.allclose(summed(TORCH).gradients["p"], 2 * np.asarray(p), rtol=1e-15)  # 2 (p - y)
    # Keras sums the rows' means: 2 (p - y) / 2
    assert np.allclose(summed(TF_KERAS).gradients["p"], np.asarray(p), rtol=1e-15)


def test_cross_entropy_smoothing_and_unnormalized_targets(gradient_of):
    z = [[0.0, 0.0]]  # softmax = (1/2, 1/2)
    # one example: the gradient is softmax * sum(t) - t
    assert np.allclose(gradient_of("cross_entropy(p, y)", z, [[1.0, 0.0]])(OPTAX).gradients["p"], [[-0.5, 0.5]])
    # smoothed: t = (1, 0) * 0.8 + 0.2 / 2 = (0.9, 0.1)
    smoothed = gradient_of("cross_entropy(p, y, label_smoothing=0.2)", z, [[1.0, 0.0]])
    assert np.allclose(smoothed(TORCH).gradients["p"], [[-0.4, 0.4]], rtol=1e-14)
    # targets summing to 2: exactly (1, 1) - (2, 0); TensorFlow's kernel takes softmax - t = (-1.5, 0.5)
    doubled = gradient_of("cross_entropy(p, y)", z, [[2.0, 0.0]])
    assert np.allclose(doubled(TORCH).gradients["p"], [[-1.0, 1.0]], rtol=1e-14)
    assert np.allclose(doubled(TF_KERAS).gradients["p"], [[-1.5, 0.5]], rtol=1e-14)


def test_label_smoothing_counts_the_class_axis_or_the_last(gradient_of):
    # classes along axis 0 (3 of them), 2 columns; every logit 0, so softmax = 1/3 down each column
    expr = "cross_entropy(p, y, axis=0, label_smoothing=0.3, reduction='sum')"
    compiled = gradient_of(expr, np.zeros((3, 2)), [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    # torch and optax: t = 0.7 t + 0.3 / 3, e.g. column 0 = (0.8, 0.1, 0.1), summing to 1
    column = 1 / 3 - np.array([0.8, 0.1, 0.1])
    assert np.allclose(compiled(TORCH).gradients["p"][:, 0], column, rtol=1e-14)
    assert np.allclose(compiled(OPTAX).gradients["p"][:, 0], column, rtol=1e-14)
    # Keras divides by the last axis' 2: column 0 = (0.85, 0.15, 0.15), summing to 1.15
    keras_jax = dataclasses.replace(OPTAX, smoothing_classes_last_axis=1.0)
    keras_column = 1.15 / 3 - np.array([0.85, 0.15, 0.15])
    assert np.allclose(compiled(keras_jax).gradients["p"][:, 0], keras_column, rtol=1e-14)


def test_binary_cross_entropy_at_0_and_1(gradient_of):
    p, y = [0.0, 1.0, 0.25, 1.0], [1.0, 0.0, 1.0, 1.0]
    compiled = gradient_of("binary_cross_entropy(p, y, reduction='sum')", p, y)
    # torch: (p - t) / max(p (1 - p), 1e-12): -1e12, 1e12, (0.25 - 1) / 0.1875 = -4, 0 / 1e-12 = 0
    assert np.allclose(compiled(TORCH).gradients["p"], [-1e12, 1e12, -4.0, 0.0], rtol=1e-14)
    # Keras clips to [1e-7, 1 - 1e-7] first: no gradient where clipped; inside, -t / p + (1 - t) / (1 - p); and
    # its sum of a vector is the sum of one row's mean, over 4 elements
    assert np.allclose(compiled(TF_KERAS).gradients["p"], [0.0, 0.0, -1.0, 0.0], rtol=1e-14)


def test_binary_cross_entropy_with_logits(gradient_of):
    # d/dx softplus(x) - x t = sigmoid(x) - t: at 0, 0.5 - t, over 2 elements
    compiled = gradient_of("binary_cross_entropy_with_logits(p, y)", [0.0, 0.0], [0.25, 1.0])
    assert np.allclose(compiled(OPTAX).gradients["p"], [0.125, -0.25], rtol=1e-15)


@pytest.mark.parametrize("tie", [0.0, 0.5, 1.0])
def test_huber_is_smooth_where_error_is_delta(gradient_of, tie):
    # errors 1 (= delta), 2, 0.5 and 0: slopes delta sign(e) beyond delta, e within, over 4 elements
    compiled = gradient_of("huber(p, y)", [1.0, 2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0])
    conventions = KinkConventions(minimum_tie_to_first=tie, abs_slope_at_zero=tie)
    assert np.allclose(compiled(conventions).gradients["p"], [0.25, 0.25, 0.125, 0.0], rtol=1e-15)


def test_kl_divergence_clip_and_batchmean(gradient_of):
    log_p, t = np.log([[0.5, 0.25], [0.5, 0.5]]), [[0.5, 0.0], [1.0, 0.0]]
    compiled = gradient_of("kl_divergence(p, y)", log_p, t)
    # -t / 2 examples
    assert np.allclose(compiled(OPTAX).gradients["p"], [[-0.25, 0.0], [-0.5, 0.0]], rtol=1e-15)
    # Keras clips the targets to [1e-7, 1]: -max(t, 1e-7) / 2
    assert np.allclose(compiled(TF_KERAS).gradients["p"], [[-0.25, -5e-8], [-0.5, -5e-8]], rtol=1e-12)
    # three axes, 2 x 3 x 2: 6 examples, but torch's batchmean divides by the first axis' 2
    cube_log_p, cube_t = np.full((2, 3, 2), np.log(0.5)), np.full((2, 3, 2), 0.5)
    cube = gradient_of("kl_divergence(p, y)", cube_log_p, cube_t)
    assert np.allclose(cube(OPTAX).gradients["p"], np.full((2, 3, 2), -0.5 / 6), rtol=1e-15)
    assert np.allclose(cube(TORCH).gradients["p"], np.full((2, 3, 2), -0.5 / 2), rtol=1e-15)


def test_torch_bce_floor_is_bounded_as_a_float_and_a_double(gradient_of):
    """Eager torch floors p (1 - p) at float32(1e-12) in float64 runs, torch.compile at the double 1e-12: the
    reference's bound holds both."""
    compiled = gradient_of("binary_cross_entropy(p, y)", [0.0], [1.0])(TORCH)
    exact, bound = compiled.gradients["p"][0], compiled.bounds["p"][0]
    for floor in (1e-12, float(np.float32(1e-12))):
        assert abs(-1.0 / floor - exact) <= bound
    assert bound < 1e-6 * abs(exact)  # still tight enough to catch a 0.1% error
