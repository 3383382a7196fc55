"""TensorFlow's `function` and `xla` and JAX's `jit` update variants compile the whole training step, as named: the
step's Python runs when it is traced, not at every step, and XLA is asked for where the variant says so; torch's
`compile` runs what inductor built, wherever the suite calls it. Without this, a variant that quietly ran eagerly
would pass every other test under a name it does not earn."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conformance import backends, faults
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES

STEPS = load_case(SHIPPED_CASES / "optimizers" / "adam-hyperparameters.toml", root=SHIPPED_CASES)


def _inputs(case) -> dict[str, np.ndarray]:
    return {spec.name: np.full(spec.shape, 0.5) for spec in case.tensors}


def _counting(monkeypatch, module, name: str) -> list[int]:
    """Counts the calls of `module.name`, passing them on."""
    calls = [0]
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow is not installed")
@pytest.mark.parametrize(
    ("variant", "traced", "jit_compile"), [("eager", False, None), ("function", True, None), ("xla", True, True)]
)
def test_tensorflow_runs_the_step_as_its_variant_names(monkeypatch, variant, traced, jit_compile):
    import tensorflow as tf

    from conformance.backends import tensorflow as adapter

    asked: list[dict] = []
    original_function = tf.function

    def function(python_function, **options):
        asked.append(options)
        return original_function(python_function, **options)

    monkeypatch.setattr(tf, "function", function)
    lowered = _counting(monkeypatch, adapter, "lower")
    run = backends.load("tensorflow").updates(STEPS, _inputs(STEPS), {"lr": 0.1}, "float32", variant, "cpu")
    assert len(run.values) == STEPS.update.steps + 1
    if traced:
        assert lowered[0] == 1 and len(asked) == 1 and asked[0].get("jit_compile") is jit_compile
    else:
        assert lowered[0] == STEPS.update.steps and not asked


@pytest.mark.skipif(importlib.util.find_spec("optax") is None, reason="jax and optax are not installed")
@pytest.mark.parametrize(("variant", "traced"), [("jit", True), ("eager", False)])
def test_jax_jits_the_whole_step_or_nothing(monkeypatch, variant, traced):
    import optax

    from conformance.backends import jax as adapter

    lowered = _counting(monkeypatch, adapter, "lower")
    applied = _counting(monkeypatch, optax, "apply_updates")
    run = backends.load("jax").updates(STEPS, _inputs(STEPS), {"lr": 0.1}, "float32", variant, "cpu")
    assert len(run.values) == STEPS.update.steps + 1
    once = 1 if traced else STEPS.update.steps  # traced once for the whole run, or run at every step
    assert lowered[0] == once and applied[0] == once


TORCH_CALLS = ("gradients", "differentiate_once", "updates")


def _torch_gradients(backend, method: str, variant: str) -> np.ndarray:
    """The first gradient the adapter's `method` hands back for STEPS, in float64."""
    inputs = _inputs(STEPS)
    if method == "updates":
        run = backend.updates(
            STEPS, inputs, {"lr": 0.1}, "float64", "for-loop" if variant == "eager" else variant, "cpu"
        )
        gradients = run.gradients[0]
    else:
        gradients = getattr(backend, method)(STEPS, inputs, "float64", variant, "cpu").gradients
    return np.concatenate([np.ravel(gradients[name]) for name in sorted(gradients)])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("method", TORCH_CALLS)
def test_torch_compile_is_inductor_once_per_case_and_dtype(monkeypatch, method):
    """Inductor itself (not dynamo's capture alone, nor an eager fallback) builds the loss, once for two calls."""
    import torch._inductor.compile_fx

    from conformance.backends.torch import TorchBackend

    built = _counting(monkeypatch, torch._inductor.compile_fx, "compile_fx")
    backend = TorchBackend()
    _torch_gradients(backend, method, "compile")
    _torch_gradients(backend, method, "compile")
    assert built[0] == 1


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("method", TORCH_CALLS)
def test_every_compiled_call_runs_the_compiled_backward(planted, method):
    """A compiler fault reaches each call the suite makes with `compile`, and no eager one."""
    from conformance.backends.torch import TorchBackend

    eager = _torch_gradients(TorchBackend(), method, "eager")
    faults.torch_miscompiled_backward(planted)
    backend = TorchBackend()
    np.testing.assert_allclose(_torch_gradients(backend, method, "compile"), eager * faults.SCALE, rtol=1e-12)
    np.testing.assert_array_equal(_torch_gradients(backend, method, "eager"), eager)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_compile_without_a_cpp_compiler_is_not_applicable_with_the_reason(monkeypatch):
    """inductor builds CPU code with a C++ compiler: a machine without one cannot run the column, which says so
    instead of failing every item."""
    import torch._inductor.cpp_builder
    import torch._inductor.exc

    from conformance.backends import torch as adapter
    from conformance.backends.base import NotApplicable

    def no_compiler():
        raise torch._inductor.exc.InvalidCxxCompiler()

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    adapter._missing_cpu_compiler.cache_clear()
    try:
        with pytest.raises(NotApplicable, match="needs a C\\+\\+ compiler for the CPU"):
            adapter.TorchBackend().gradients(STEPS, _inputs(STEPS), "float64", "compile", "cpu")
        adapter.TorchBackend().gradients(STEPS, _inputs(STEPS), "float64", "eager", "cpu")  # eager needs none
    finally:
        adapter._missing_cpu_compiler.cache_clear()
