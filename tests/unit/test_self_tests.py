"""The properties must catch deliberately broken frameworks, or the suite's green cells mean nothing.

Each fault (from `conformance.faults`, which `conformance mutate` plants too) is put into the framework itself (torch's
`Tensor.backward` and `Tensor.grad`, `tf.GradientTape.gradient`, `jax.value_and_grad`), below the unmodified adapter, so
the adapter is exercised as it is in the suite. For each fault the property meant to catch it must fail on at least one
of a handful of Hypothesis draws (`hypothesis.find`), in float32 and float64; without the fault the same checks pass on
the same cases."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from conformance import faults, properties, strategies
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES as SHIPPED
from conformance.reference.gradients import compiled_gradient

CASES = list(faults.GRADIENT_CASES)
DTYPES = ["float32", "float64"]
HANDFUL = settings(max_examples=10, deadline=None, database=None)
SEARCH = settings(HANDFUL, phases=[Phase.generate])  # a failing draw is enough; no need to shrink it


@functools.cache
def shipped(case_id: str):
    """One Case object per id, so that the reference's per-case compilation cache is hit."""
    return load_case(SHIPPED / f"{case_id}.toml", SHIPPED)


def check(property_name: str, backend, case, inputs, dtype: str, variant: str):
    """The property on one draw, from the adapter call the suite makes for it: one differentiation for
    matches_reference, two for the differentiation properties."""
    if property_name == "matches_reference":
        run = backend.differentiate_once(case, inputs, dtype, variant, "cpu")
        return properties.matches_reference(run, compiled_gradient(case)(inputs, backend.conventions, dtype))
    return getattr(properties, property_name)(backend.gradients(case, inputs, dtype, variant, "cpu"))


def assert_caught(property_name: str, backend, case, dtype: str, variant: str) -> None:
    """The property fails on at least one of a handful of draws."""

    def fails(inputs) -> bool:
        return not check(property_name, backend, case, inputs, dtype, variant).ok

    try:
        find(strategies.inputs(case, dtype), fails, settings=SEARCH)
    except NoSuchExample:
        pytest.fail(f"{property_name} did not catch the fault on {case.id} in {dtype} ({variant})")


# --------------------------------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_backend(torch):
    """One instance serves the faulty and the real runs: it keeps only its compiled losses, and the faults below act
    on what they return (backward() and .grad are eager)."""
    from conformance.backends.torch import TorchBackend

    return TorchBackend()


@pytest.fixture
def fresh_torch_backend(torch):
    """A fresh instance, for a fault in torch.compile itself, which must not meet a loss compiled before it."""
    from conformance.backends.torch import TorchBackend

    return TorchBackend()


TORCH_FAULTS = {
    "scaled gradients": (faults.torch_scaled_gradients, "matches_reference"),
    "nudged variables": (faults.torch_nudged_variables, "values_unchanged"),
    "leaked gradients": (faults.torch_leaked_gradients, "repeatable"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["eager", "compile"])
@pytest.mark.parametrize("case_id", CASES)
@pytest.mark.parametrize(("fault", "property_name"), TORCH_FAULTS.values(), ids=TORCH_FAULTS.keys())
def test_a_broken_torch_is_caught(torch, torch_backend, planted, fault, property_name, case_id, variant, dtype):
    fault(planted)
    assert_caught(property_name, torch_backend, shipped(case_id), dtype, variant)


@pytest.mark.parametrize("case_id", faults.LOSS_CASES)
def test_a_torch_loss_that_miscounts_its_mean_is_caught(torch, torch_backend, planted, case_id):
    faults.torch_miscounted_mean(planted)
    assert_caught("matches_reference", torch_backend, shipped(case_id), "float32", "eager")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", CASES[:2])
def test_a_miscompiling_torch_compile_is_caught_where_it_compiles(torch, fresh_torch_backend, planted, case_id, dtype):
    """The compiled variant fails where torch.compile's backward is wrong; eager torch, untouched by the fault,
    still passes the same check on the same draws."""
    faults.torch_miscompiled_backward(planted)
    case = shipped(case_id)
    assert_caught("matches_reference", fresh_torch_backend, case, dtype, "compile")

    @SEARCH
    @given(inputs=strategies.inputs(case, dtype))
    def eager_passes(inputs):
        assert check("matches_reference", fresh_torch_backend, case, inputs, dtype, "eager").ok

    eager_passes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["eager", "compile"])
@pytest.mark.parametrize("case_id", CASES)
@HANDFUL
@given(data=st.data())
def test_the_real_torch_passes_the_same_checks(torch, torch_backend, case_id, variant, dtype, data):
    case = shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    for property_name in ("matches_reference", "values_unchanged", "repeatable"):
        result = check(property_name, torch_backend, case, inputs, dtype, variant)
        assert result.ok, (property_name, result)


def test_the_compiled_variant_runs_what_torch_compile_built(torch, fresh_torch_backend):
    """A loss dynamo could not capture whole would be an error, not a silent return to eager: the compiled variant's
    gradients come from one captured graph per case and dtype, reused across draws."""
    from torch._dynamo.utils import counters

    case = shipped(CASES[0])
    inputs = {spec.name: np.linspace(-1.0, 1.0, int(np.prod(spec.shape))).reshape(spec.shape) for spec in case.tensors}
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(3):
        fresh_torch_backend.gradients(case, inputs, "float32", "compile", "cpu")
    assert counters["stats"]["unique_graphs"] == graphs + 1


# ----------------------------------------------------------------------------------------------------- jax


@pytest.fixture(scope="module")
def jax():
    return pytest.importorskip("jax")


@pytest.fixture
def broken_jax_backend(jax):
    """A fresh instance per test: the backend caches jitted functions, which must not outlive the fault."""
    from conformance.backends.jax import JaxBackend

    return JaxBackend()


@pytest.fixture(scope="module")
def jax_backend(jax):
    from conformance.backends.jax import JaxBackend

    return JaxBackend()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["jit", "eager"])
@pytest.mark.parametrize("case_id", CASES[:2])
def test_a_broken_jax_is_caught(jax, broken_jax_backend, planted, case_id, variant, dtype):
    faults.jax_scaled_gradients(planted)
    assert_caught("matches_reference", broken_jax_backend, shipped(case_id), dtype, variant)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["jit", "eager"])
@pytest.mark.parametrize("case_id", CASES[:2])
@HANDFUL
@given(data=st.data())
def test_the_real_jax_passes_the_same_checks(jax, jax_backend, case_id, variant, dtype, data):
    case = shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    for property_name in ("matches_reference", "values_unchanged", "repeatable"):
        result = check(property_name, jax_backend, case, inputs, dtype, variant)
        assert result.ok, (property_name, result)


# ---------------------------------------------------------------------------------------------- tensorflow


@pytest.fixture
def broken_tensorflow_backend():
    """A fresh instance per test: under tf.function the backend caches traced functions, which hold the fault."""
    pytest.importorskip("tensorflow")
    from conformance.backends.tensorflow import TensorFlowBackend

    return TensorFlowBackend()


TENSORFLOW_FAULTS = {
    "scaled gradients": (faults.keras_scaled_gradients, "matches_reference"),
    "nudged variables": (faults.keras_nudged_variables, "values_unchanged"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["eager", "function"])
@pytest.mark.parametrize("case_id", CASES[:2])
@pytest.mark.parametrize(("fault", "property_name"), TENSORFLOW_FAULTS.values(), ids=TENSORFLOW_FAULTS.keys())
def test_a_broken_tensorflow_is_caught(
    broken_tensorflow_backend, planted, fault, property_name, case_id, variant, dtype
):
    fault(planted)
    assert_caught(property_name, broken_tensorflow_backend, shipped(case_id), dtype, variant)


@pytest.mark.parametrize("variant", ["eager", "function"])
@pytest.mark.parametrize("case_id", faults.LOSS_CASES)
def test_a_keras_loss_that_miscounts_its_mean_is_caught(broken_tensorflow_backend, planted, case_id, variant):
    faults.keras_miscounted_mean(planted)
    assert_caught("matches_reference", broken_tensorflow_backend, shipped(case_id), "float32", variant)
