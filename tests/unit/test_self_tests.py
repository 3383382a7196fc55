"""The properties must catch deliberately broken frameworks, or the suite's green cells mean nothing.

Each fault is put into the framework itself (torch's `Tensor.backward` and `Tensor.grad`, `jax.value_and_grad`),
below the unmodified adapter, so the adapter is exercised as it is in the suite. For each fault the property
meant to catch it must fail on at least one of a handful of Hypothesis draws (`hypothesis.find`), in float32 and
float64; without the fault the same checks pass on the same cases.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis.errors import NoSuchExample
from hypothesis import strategies as st

from conformance import properties, strategies
from conformance.cases import load_case
from conformance.reference.gradients import compiled_gradient

SHIPPED = Path(__file__).resolve().parents[2] / "cases"
CASES = ["seed/linear-square", "losses/linear-regression", "losses/matrix-variable"]
DTYPES = ["float32", "float64"]
SCALE = 1 + 1e-3  # a 0.1% error in every gradient: the size of error the design says must always be caught
HANDFUL = settings(max_examples=10, deadline=None, database=None)
SEARCH = settings(HANDFUL, phases=[Phase.generate])  # a failing draw is enough; no need to shrink it


@functools.cache
def shipped(case_id: str):
    """One Case object per id, so that the reference's per-case compilation cache is hit."""
    return load_case(SHIPPED / f"{case_id}.toml", SHIPPED)


def check(property_name: str, backend, case, inputs, dtype: str, variant: str):
    run = backend.gradients(case, inputs, dtype, variant, "cpu")
    if property_name == "matches_reference":
        return properties.matches_reference(run, compiled_gradient(case)(inputs, backend.conventions, dtype))
    return getattr(properties, property_name)(run)


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
    """Holds no state between calls, so one instance serves the faulty and the real runs."""
    from conformance.backends.torch import TorchBackend

    return TorchBackend()


def scale_gradients(torch, monkeypatch):
    """backward() seeds the loss' gradient with 1 + 1e-3 instead of 1: every gradient is 0.1% too large."""
    original = torch.Tensor.backward

    def backward(self, gradient=None, *args, **kwargs):
        return original(self, torch.full_like(self, SCALE), *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)


def nudge_leaves(torch, monkeypatch):
    """backward() moves every leaf it reaches up by one ulp, as a framework that touched variables in place would."""
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        leaves = leaves_of(self)
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            for leaf in leaves:
                leaf.copy_(torch.nextafter(leaf, torch.full_like(leaf, math.inf)))
        return result

    monkeypatch.setattr(torch.Tensor, "backward", backward)


def leak_gradients(torch, monkeypatch):
    """`leaf.grad = None` (what zero_grad() does) is ignored, so a second backward() adds to the first gradient."""
    native = torch._C.TensorBase.grad

    def set_grad(self, value):
        if value is not None:
            native.__set__(self, value)

    monkeypatch.setattr(torch.Tensor, "grad", property(native.__get__, set_grad))


def leaves_of(loss) -> list:
    """The leaf tensors behind `loss`: its autograd graph's AccumulateGrad nodes hold them as `.variable`."""
    leaves, pending, seen = [], [loss.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        pending.extend(child for child, _ in node.next_functions)
    return leaves


TORCH_FAULTS = {
    "scaled gradients": (scale_gradients, "matches_reference"),
    "nudged variables": (nudge_leaves, "values_unchanged"),
    "leaked gradients": (leak_gradients, "repeatable"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", CASES)
@pytest.mark.parametrize(("fault", "property_name"), TORCH_FAULTS.values(), ids=TORCH_FAULTS.keys())
def test_a_broken_torch_is_caught(torch, torch_backend, monkeypatch, fault, property_name, case_id, dtype):
    fault(torch, monkeypatch)
    assert_caught(property_name, torch_backend, shipped(case_id), dtype, "eager")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", CASES)
@HANDFUL
@given(data=st.data())
def test_the_real_torch_passes_the_same_checks(torch, torch_backend, case_id, dtype, data):
    case = shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    for property_name in ("matches_reference", "values_unchanged", "repeatable"):
        result = check(property_name, torch_backend, case, inputs, dtype, "eager")
        assert result.ok, (property_name, result)


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


def scale_jax_gradients(jax, monkeypatch):
    """jax.value_and_grad returns every gradient 0.1% too large (under jax.jit as well as eagerly)."""
    original = jax.value_and_grad

    def value_and_grad(function, *args, **kwargs):
        differentiate = original(function, *args, **kwargs)

        def scaled(*call_args, **call_kwargs):
            value, grads = differentiate(*call_args, **call_kwargs)
            return value, jax.tree_util.tree_map(lambda gradient: gradient * SCALE, grads)

        return scaled

    monkeypatch.setattr(jax, "value_and_grad", value_and_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ["jit", "eager"])
@pytest.mark.parametrize("case_id", CASES[:2])
def test_a_broken_jax_is_caught(jax, broken_jax_backend, monkeypatch, case_id, variant, dtype):
    scale_jax_gradients(jax, monkeypatch)
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
