"""Keras 3 on its JAX and PyTorch engines (conformance/backends/keras_engines.py), each in a process of its own.

The gradient faults of each engine, planted in that engine's process (faults.plant_in_process), must be caught in
float32 on a handful of draws, as test_self_tests.py shows for the native frameworks; the real engines pass the same
checks. float64 is not applicable there, and the Keras behaviour that makes it so is checked here, so that the day
Keras keeps float64 the refusal fails a test instead of hiding a column.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from conformance import backends, faults, properties, strategies
from conformance.backends import NotApplicable
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES as SHIPPED
from conformance.reference.gradients import compiled_gradient

ENGINES = {"keras-jax": "jit", "keras-torch": "eager"}
HANDFUL = settings(max_examples=10, deadline=None, database=None)
SEARCH = settings(HANDFUL, phases=[Phase.generate])
GRADIENT_PROPERTIES = {
    "gradient.matches_reference": "matches_reference",
    "differentiation.values_unchanged": "values_unchanged",
    "differentiation.repeatable": "repeatable",
}
GRADIENT_FAULTS = [
    pytest.param(fault, case_id, id=f"{fault.key}-{case_id}")
    for fault in faults.FAULTS
    if fault.backend in ENGINES and fault.expected[0] in GRADIENT_PROPERTIES
    for case_id in fault.cases
]


@functools.cache
def shipped(case_id: str):
    return load_case(SHIPPED / f"{case_id}.toml", SHIPPED)


def engine_or_skip(name: str):
    backend = backends.load(name)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    return backend


def check(property_name: str, backend, case, inputs):
    run = backend.gradients(case, inputs, "float32", ENGINES[backend.name], "cpu")
    if property_name == "matches_reference":
        return properties.matches_reference(run, compiled_gradient(case)(inputs, backend.conventions, "float32"))
    return getattr(properties, property_name)(run)


@pytest.mark.parametrize(("fault", "case_id"), GRADIENT_FAULTS)
def test_a_broken_engine_is_caught(own_process_faults, fault, case_id):
    engine_or_skip(fault.backend)
    backend, case = own_process_faults.backend(fault.key), shipped(case_id)
    property_name = GRADIENT_PROPERTIES[fault.expected[0]]
    try:
        find(
            strategies.inputs(case, "float32"),
            lambda inputs: not check(property_name, backend, case, inputs).ok,
            settings=SEARCH,
        )
    except NoSuchExample:
        pytest.fail(f"{property_name} did not catch {fault.key} on {case_id}")


@pytest.mark.parametrize("property_name", sorted(set(GRADIENT_PROPERTIES.values())))
@pytest.mark.parametrize("case_id", faults.GRADIENT_CASES)
@pytest.mark.parametrize("name", sorted(ENGINES))
@HANDFUL
@given(data=st.data())
def test_the_real_engine_passes_the_same_checks(name, case_id, property_name, data):
    backend, case = engine_or_skip(name), shipped(case_id)
    inputs = data.draw(strategies.inputs(case, "float32"), label="inputs")
    comparison = check(property_name, backend, case, inputs)
    assert comparison.ok, comparison


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_float64_is_not_applicable_with_the_reason(name):
    backend, case = engine_or_skip(name), shipped("seed/adam-step")
    inputs = {"x": 2.0}
    with pytest.raises(NotApplicable, match="computes float64 partly in float32"):
        backend.gradients(case, inputs, "float64", ENGINES[name], "cpu")
    with pytest.raises(NotApplicable, match="computes float64 partly in float32"):
        backend.updates(case, inputs, {"lr": 0.1}, "float64", ENGINES[name], "cpu")


DEMOTION = """
import numpy as np, keras
x = keras.ops.convert_to_tensor(np.array([[0.1, 0.2], [0.3, 0.4]]), dtype="float64")
dtype = keras.backend.standardize_dtype
tiny = keras.ops.convert_to_tensor(np.array([1.0, 2.0**-30]), dtype="float64")  # 1 + 2**-30 is 1 in float32
mean = keras.ops.mean(tiny)
print(dtype(x.dtype), keras.backend.result_type(x.dtype, x.dtype), dtype(keras.ops.{op}.dtype), dtype(mean.dtype),
      float(keras.ops.convert_to_numpy(mean)) == 0.5)
"""
DEMOTED_OPS = {"jax": "tanh(x)", "torch": "matmul(x, x)"}  # one op each engine computes in float32


@pytest.mark.parametrize("engine", sorted(DEMOTED_OPS))
def test_keras_still_demotes_float64_on_the_engine(engine):
    """What FLOAT64_DEMOTED says of Keras: when this fails, Keras keeps float64, and keras-* can run it."""
    pytest.importorskip(engine)
    pytest.importorskip("keras")
    environment = {**os.environ, "KERAS_BACKEND": engine, "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    completed = subprocess.run(
        [sys.executable, "-c", DEMOTION.format(op=DEMOTED_OPS[engine])],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=True,
    )
    # the result type, an op's dtype, and keras.ops.mean: float64 out, computed in float32 (exact: 0.5 + 2**-31)
    assert completed.stdout.split() == ["float64", "float32", "float32", "float64", "True"]


def test_the_engines_run_beside_keras_on_tensorflow():
    """Three Keras engines in one run: this process' Keras stays on TensorFlow."""
    pytest.importorskip("tensorflow")
    for name in ENGINES:
        versions = engine_or_skip(name).versions()
        assert set(versions) == {"keras", name.removeprefix("keras-")}
    tensorflow = backends.load("tensorflow")
    assert "tensorflow" in tensorflow.versions()
    import keras

    assert keras.backend.backend() == "tensorflow"
