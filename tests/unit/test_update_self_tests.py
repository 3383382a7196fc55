"""The update and accumulation properties must catch deliberately broken optimizers, or their green cells mean nothing.

As in test_self_tests.py, each fault of `conformance.faults` is put into the framework itself, below the unmodified
adapter: torch.optim's step hooks and `Tensor.backward`, `optax.apply_updates`, `optax.tree.bias_correction` and
`optax.MultiSteps.update`, Keras' `apply_gradients`.
For each fault, `update_properties.matches_reference` (or `accumulation_matches`) must fail on at least one of a
handful of draws of inputs and hyperparameters, in float32 and float64; without the fault the same checks pass.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from conformance import backends, faults, strategies, update_properties
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES as SHIPPED
from conformance.reference import optimizers

UPDATE_CASES = list(faults.UPDATE_CASES)
ACCUMULATION_CASES = list(faults.ACCUMULATION_CASES)
DTYPES = ["float32", "float64"]
HANDFUL = settings(max_examples=10, deadline=None, database=None)
SEARCH = settings(HANDFUL, phases=[Phase.generate])  # a failing draw is enough; no need to shrink it
IMPORTS = {
    "torch": ("torch",),
    "jax": ("jax", "optax"),
    "tensorflow": ("tensorflow",),
    "keras-jax": ("keras", "jax"),
    "keras-torch": ("keras", "torch"),
}
# Keras 3 on jax and torch computes float64 in float32, so float64 is not applicable there (keras_engines.py)
DTYPES_OF = {"keras-jax": ["float32"], "keras-torch": ["float32"]}


@functools.cache
def shipped(case_id: str):
    """One Case object per id, so that per-case caches (jitted gradients) are hit."""
    return load_case(SHIPPED / f"{case_id}.toml", root=SHIPPED)


def backend_or_skip(name: str):
    """The registry's instance: the faults live in the framework, so the real and broken runs can share it."""
    for module in IMPORTS[name]:
        pytest.importorskip(module)
    return backends.load(name)


def broken_backend(fault: faults.Fault, planted, own_process_faults):
    """A fresh adapter with the fault planted below it (the shared one may hold functions compiled before the
    fault): here, or in the backend's own process where it runs in one."""
    backend = backend_or_skip(fault.backend)
    if fault.own_process:
        return own_process_faults.backend(fault.key)
    fault.plant(planted)
    return type(backend)()


def update_check(backend, case, inputs: dict, hyper: dict, dtype: str, variant: str):
    """`update.matches_reference` as tests/conformance/test_updates.py runs it: steps and fed gradients."""
    complete = optimizers.hyperparameters(case.update.rule, backend.name, backend.optimizers, hyper)
    run = backend.updates(case, inputs, hyper, dtype, variant, "cpu")
    side = update_properties.Side(
        backend.name,
        complete,
        backend.optimizers,
        backend.conventions,
        run,
        backend.decay_rates_in_dtype("cpu", variant),
    )
    reference_at = update_properties.summed_reference(case, inputs, dtype)(side.switches, side.conventions)
    start = {spec.name: inputs[spec.name] for spec in case.variables}
    return update_properties.health(case.update.rule, side, reference_at, start, dtype)[0]


def accumulation_check(backend, case, inputs: dict, dtype: str):
    """`accumulation.native` as tests/conformance/test_updates.py runs it."""
    run = backend.accumulation(case, inputs, dtype, backend.variants[0], "cpu")
    return update_properties.native_accumulation(run, dtype)[0]


def draws(case, dtype: str):
    return st.tuples(strategies.inputs(case, dtype), strategies.hyperparameters(case))


def assert_caught(fails, strategy, what: str) -> None:
    """`fails` is true for at least one of a handful of draws."""
    try:
        find(strategy, fails, settings=SEARCH)
    except NoSuchExample:
        pytest.fail(f"not caught: {what}")


# ---------------------------------------------------------------------------------------------------- the tests

# every way each framework runs a training step (torch's optimizer implementations, tf.function and XLA, a jitted
# step), named here so that the parameters need no framework imported
TRAINING_STEPS = {
    "torch": ("for-loop", "foreach", "fused", "compile"),
    "tensorflow": ("eager", "function", "xla"),
    "jax": ("jit", "eager"),
    "keras-jax": ("jit",),
    "keras-torch": ("eager",),
}
UPDATE_FAULT_PARAMS = [
    pytest.param(fault, case_id, dtype, variant, id=f"{fault.key}-{case_id}-{dtype}-{variant}")
    for fault in faults.FAULTS
    if fault.expected == ("update.matches_reference",)
    for case_id in fault.cases
    for dtype in DTYPES_OF.get(fault.backend, DTYPES)
    for variant in TRAINING_STEPS[fault.backend]
]
UPDATE_PARAMS = [
    pytest.param(framework, case_id, dtype, variant, id=f"{framework}-{case_id}-{dtype}-{variant}")
    for framework, variants in TRAINING_STEPS.items()
    for case_id in UPDATE_CASES
    for dtype in DTYPES_OF.get(framework, DTYPES)
    for variant in variants
]
ACCUMULATION_FAULT_PARAMS = [
    pytest.param(fault, case_id, dtype, id=f"{fault.key}-{case_id}-{dtype}")
    for fault in faults.FAULTS
    if fault.expected == ("accumulation.native",)
    for case_id in fault.cases
    for dtype in DTYPES_OF.get(fault.backend, DTYPES)
]
ACCUMULATION_PARAMS = [
    pytest.param(framework, case_id, dtype, id=f"{framework}-{case_id}-{dtype}")
    for framework in IMPORTS
    for case_id in ACCUMULATION_CASES
    for dtype in DTYPES_OF.get(framework, DTYPES)
]


@pytest.mark.parametrize(("fault", "case_id", "dtype", "variant"), UPDATE_FAULT_PARAMS)
def test_a_broken_optimizer_is_caught(planted, own_process_faults, fault, case_id, dtype, variant):
    backend, case = broken_backend(fault, planted, own_process_faults), shipped(case_id)
    assert_caught(
        lambda draw: not update_check(backend, case, *draw, dtype, variant).ok,
        draws(case, dtype),
        f"{fault.key} on {case_id} in {dtype}, {variant}",
    )


def test_every_training_step_is_named():
    """The table above names each backend's training-step variants as the adapters declare them."""
    for name, variants in TRAINING_STEPS.items():
        assert backend_or_skip(name).training_step_variants() == variants


@pytest.mark.parametrize(("framework", "case_id", "dtype", "variant"), UPDATE_PARAMS)
@HANDFUL
@given(data=st.data())
def test_the_real_optimizer_passes_the_same_checks(framework, case_id, dtype, variant, data):
    backend, case = backend_or_skip(framework), shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    hyper = data.draw(strategies.hyperparameters(case), label="hyperparameters")
    comparison = update_check(backend, case, inputs, hyper, dtype, variant)
    assert comparison.ok, comparison


@pytest.mark.parametrize(("fault", "case_id", "dtype"), ACCUMULATION_FAULT_PARAMS)
def test_overwriting_accumulation_is_caught(planted, own_process_faults, fault, case_id, dtype):
    backend, case = broken_backend(fault, planted, own_process_faults), shipped(case_id)
    assert_caught(
        lambda inputs: not accumulation_check(backend, case, inputs, dtype).ok,
        strategies.inputs(case, dtype),
        f"{fault.key} on {case_id} in {dtype}",
    )


@pytest.mark.parametrize(("framework", "case_id", "dtype"), ACCUMULATION_PARAMS)
@HANDFUL
@given(data=st.data())
def test_the_real_accumulation_passes(framework, case_id, dtype, data):
    backend, case = backend_or_skip(framework), shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    comparison = accumulation_check(backend, case, inputs, dtype)
    assert comparison.ok, comparison
