"""The update and accumulation properties must catch deliberately broken optimizers, or their green cells mean nothing.

As in test_self_tests.py, each fault is put into the framework itself, below the unmodified adapter: torch.optim's
`step` and `Tensor.backward`, `optax.apply_updates` and `optax.tree.bias_correction`, Keras' `apply_gradients`.
For each fault, `update_properties.matches_reference` (or `accumulation_matches`) must fail on at least one of a
handful of draws of inputs and hyperparameters, in float32 and float64; without the fault the same checks pass.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from conformance import backends, strategies, update_properties
from conformance.cases import load_case
from conformance.reference import optimizers

SHIPPED = Path(__file__).resolve().parents[2] / "cases"
UPDATE_CASES = ["seed/adam-step", "optimizers/adam-hyperparameters", "optimizers/sgd-momentum"]
ADAM_CASES = UPDATE_CASES[:2]
ACCUMULATION_CASES = ["seed/accumulate-sgd", "accumulation/mse-four-micro-batches"]
DTYPES = ["float32", "float64"]
SCALE = 1 + 1e-3  # a step 0.1% too long: the size of error the design says must always be caught
HANDFUL = settings(max_examples=10, deadline=None, database=None)
SEARCH = settings(HANDFUL, phases=[Phase.generate])  # a failing draw is enough; no need to shrink it
IMPORTS = {"torch": ("torch",), "jax": ("jax", "optax"), "tensorflow": ("tensorflow",)}


@functools.cache
def shipped(case_id: str):
    """One Case object per id, so that per-case caches (jitted gradients) are hit."""
    return load_case(SHIPPED / f"{case_id}.toml", root=SHIPPED)


def backend_or_skip(name: str):
    """The registry's instance: the faults live in the framework, so the real and broken runs can share it."""
    for module in IMPORTS[name]:
        pytest.importorskip(module)
    return backends.load(name)


def update_check(backend, case, inputs: dict, hyper: dict, dtype: str):
    """`update.matches_reference` as tests/conformance/test_updates.py runs it."""
    complete = optimizers.hyperparameters(case.update.rule, backend.name, hyper)
    run = backend.updates(case, inputs, hyper, dtype, backend.variants[0], "cpu")
    comparison, _ = update_properties.matches_reference(case.update.rule, complete, optimizers.SWITCHES[backend.name],
                                                        run, dtype)  # fmt: skip
    return comparison


def accumulation_check(backend, case, inputs: dict, dtype: str):
    return update_properties.accumulation_matches(backend.accumulation(case, inputs, dtype, backend.variants[0], "cpu"),
                                                  dtype)  # fmt: skip


def draws(case, dtype: str):
    return st.tuples(strategies.inputs(case, dtype), strategies.hyperparameters(case))


def assert_caught(fails, strategy, what: str) -> None:
    """`fails` is true for at least one of a handful of draws."""
    try:
        find(strategy, fails, settings=SEARCH)
    except NoSuchExample:
        pytest.fail(f"not caught: {what}")


# ---------------------------------------------------------------------------------------------------- torch

def wrap_torch_steps(monkeypatch, classes: tuple[str, ...], after) -> None:
    """`torch.optim.<Class>.step` runs as released, then `after(optimizer, parameters, values_before)`."""
    import torch

    for name in classes:
        cls = getattr(torch.optim, name)
        original = cls.step

        def step(self, *args, _original=original, **kwargs):
            parameters = [p for group in self.param_groups for p in group["params"]]
            before = [p.detach().clone() for p in parameters]
            result = _original(self, *args, **kwargs)
            with torch.no_grad():
                after(self, parameters, before)
            return result

        monkeypatch.setattr(cls, "step", step)


def longer_torch_steps(monkeypatch) -> None:
    """Every parameter change is 1.001 times what the optimizer computed."""

    def lengthen(optimizer, parameters, before):
        for parameter, old in zip(parameters, before):
            parameter.copy_(old + (parameter - old) * SCALE)

    wrap_torch_steps(monkeypatch, ("Adam", "SGD"), lengthen)


def uncorrected_torch_adam(monkeypatch) -> None:
    """Adam without bias correction: p = p_old - lr * exp_avg / (sqrt(exp_avg_sq) + eps), from its own state."""

    def uncorrect(optimizer, parameters, before):
        group = optimizer.param_groups[0]
        for parameter, old in zip(parameters, before):
            state = optimizer.state[parameter]
            parameter.copy_(old - group["lr"] * state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"]))

    wrap_torch_steps(monkeypatch, ("Adam",), uncorrect)


def bfloat16_torch_parameters(monkeypatch) -> None:
    """Parameters are rounded through bfloat16 after every step, as a lossy master copy would."""
    import torch

    def round_parameters(optimizer, parameters, before):
        for parameter in parameters:
            parameter.copy_(parameter.to(torch.bfloat16).to(parameter.dtype))

    wrap_torch_steps(monkeypatch, ("Adam", "SGD"), round_parameters)


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


def overwriting_torch_backward(monkeypatch) -> None:
    """backward() replaces `.grad` instead of adding to it: accumulation keeps only the last micro-batch."""
    import torch

    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        for leaf in leaves_of(self):
            leaf.grad = None
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)


# ---------------------------------------------------------------------------------------------------- optax

def longer_optax_steps(monkeypatch) -> None:
    """optax.apply_updates applies every update 1.001 times over."""
    import jax
    import optax

    original = optax.apply_updates
    monkeypatch.setattr(optax, "apply_updates",
                        lambda params, updates: original(params, jax.tree.map(lambda u: u * SCALE, updates)))


def uncorrected_optax_adam(monkeypatch) -> None:
    """optax.tree.bias_correction returns the moment as it is, so scale_by_adam divides by nothing."""
    import optax

    monkeypatch.setattr(optax.tree, "bias_correction", lambda moment, decay, count: moment)


def bfloat16_optax_parameters(monkeypatch) -> None:
    """optax.apply_updates rounds the new parameters through bfloat16."""
    import jax
    import optax

    original = optax.apply_updates

    def apply_updates(params, updates):
        return jax.tree.map(lambda p: p.astype(jax.numpy.bfloat16).astype(p.dtype), original(params, updates))

    monkeypatch.setattr(optax, "apply_updates", apply_updates)


# ---------------------------------------------------------------------------------------------------- keras

def wrap_keras_apply(monkeypatch, classes: tuple[str, ...], after) -> None:
    """`keras.optimizers.<Class>.apply_gradients` runs as released, then `after(optimizer, variable, value_before)`
    for each variable it updated."""
    import tensorflow as tf

    for name in classes:
        cls = getattr(tf.keras.optimizers, name)
        original = cls.apply_gradients

        def apply_gradients(self, grads_and_vars, *args, _original=original, **kwargs):
            pairs = list(grads_and_vars)
            before = [np.array(variable.numpy(), copy=True) for _, variable in pairs]
            result = _original(self, pairs, *args, **kwargs)
            for (_, variable), old in zip(pairs, before):
                after(self, variable, old)
            return result

        monkeypatch.setattr(cls, "apply_gradients", apply_gradients)


def longer_keras_steps(monkeypatch) -> None:
    """Every variable change is 1.001 times what the optimizer computed."""
    wrap_keras_apply(monkeypatch, ("Adam", "SGD"),
                     lambda optimizer, variable, old: variable.assign(old + (variable.numpy() - old) * SCALE))


def uncorrected_keras_adam(monkeypatch) -> None:
    """Adam without bias correction: p = p_old - lr * m / (sqrt(v) + eps), from the optimizer's own slots."""

    def uncorrect(optimizer, variable, old):
        index = optimizer._get_variable_index(variable)
        m, v = optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()
        lr, eps = np.asarray(optimizer.learning_rate, old.dtype), old.dtype.type(optimizer.epsilon)
        variable.assign(old - lr * m / (np.sqrt(v) + eps))

    wrap_keras_apply(monkeypatch, ("Adam",), uncorrect)


def bfloat16_keras_variables(monkeypatch) -> None:
    """Variables are rounded through bfloat16 after every step."""
    import tensorflow as tf

    def round_variable(optimizer, variable, old):
        variable.assign(tf.cast(tf.cast(variable, tf.bfloat16), variable.dtype))

    wrap_keras_apply(monkeypatch, ("Adam", "SGD"), round_variable)


# ---------------------------------------------------------------------------------------------------- the tests

UPDATE_FAULTS = [
    ("step 0.1% too long", {"torch": longer_torch_steps, "jax": longer_optax_steps, "tensorflow": longer_keras_steps},
     UPDATE_CASES),
    ("adam without bias correction",
     {"torch": uncorrected_torch_adam, "jax": uncorrected_optax_adam, "tensorflow": uncorrected_keras_adam},
     ADAM_CASES),
    ("bfloat16 parameters",
     {"torch": bfloat16_torch_parameters, "jax": bfloat16_optax_parameters, "tensorflow": bfloat16_keras_variables},
     UPDATE_CASES),
]  # fmt: skip
UPDATE_FAULT_PARAMS = [pytest.param(framework, fault, case_id, dtype, id=f"{description}-{framework}-{case_id}-{dtype}")
                       for description, faults, case_ids in UPDATE_FAULTS for framework, fault in faults.items()
                       for case_id in case_ids for dtype in DTYPES]  # fmt: skip


@pytest.mark.parametrize(("framework", "fault", "case_id", "dtype"), UPDATE_FAULT_PARAMS)
def test_a_broken_optimizer_is_caught(monkeypatch, framework, fault, case_id, dtype):
    backend, case = backend_or_skip(framework), shipped(case_id)
    fault(monkeypatch)
    assert_caught(lambda draw: not update_check(backend, case, *draw, dtype).ok, draws(case, dtype),
                  f"{fault.__name__} on {case_id} in {dtype}")  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", UPDATE_CASES)
@pytest.mark.parametrize("framework", ["torch", "jax", "tensorflow"])
@HANDFUL
@given(data=st.data())
def test_the_real_optimizer_passes_the_same_checks(framework, case_id, dtype, data):
    backend, case = backend_or_skip(framework), shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    hyper = data.draw(strategies.hyperparameters(case), label="hyperparameters")
    comparison = update_check(backend, case, inputs, hyper, dtype)
    assert comparison.ok, comparison


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", ACCUMULATION_CASES)
def test_overwriting_accumulation_is_caught(monkeypatch, case_id, dtype):
    backend, case = backend_or_skip("torch"), shipped(case_id)
    overwriting_torch_backward(monkeypatch)
    assert_caught(lambda inputs: not accumulation_check(backend, case, inputs, dtype).ok,
                  strategies.inputs(case, dtype), f"overwriting .grad on {case_id} in {dtype}")  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", ACCUMULATION_CASES)
@HANDFUL
@given(data=st.data())
def test_the_real_torch_accumulation_passes(case_id, dtype, data):
    backend, case = backend_or_skip("torch"), shipped(case_id)
    inputs = data.draw(strategies.inputs(case, dtype), label="inputs")
    comparison = accumulation_check(backend, case, inputs, dtype)
    assert comparison.ok, comparison
