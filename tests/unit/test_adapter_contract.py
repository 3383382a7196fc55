"""An adapter that breaks the interface (a flattened gradient, a variable left out, a trajectory of the wrong length,
a list instead of an array) is an error blamed on the adapter, with what it returned, never a failure blamed on
the framework it wraps."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conformance.backends.base import AccumulationRun, Backend, GradientRun, UpdateRun
from conformance.backends.contract import ContractViolation, check
from conformance.cases import load_case
from conformance.item import BackendError, ConformanceItem, ItemSpec
from conformance.pytest_plugin import SHIPPED_CASES

MATRIX = load_case(SHIPPED_CASES / "losses/matrix-variable.toml", SHIPPED_CASES)  # a variable W of shape (3, 3)
ADAM = load_case(SHIPPED_CASES / "seed/adam-step.toml", SHIPPED_CASES)
ACCUMULATE = load_case(SHIPPED_CASES / "seed/accumulate-sgd.toml", SHIPPED_CASES)


def values(case, dtype="float32", flat=False) -> dict:
    return {spec.name: np.zeros(spec.size if flat else spec.shape, dtype) for spec in case.variables}


def gradient_run(case, **changes) -> GradientRun:
    run = GradientRun(0.0, values(case), values(case), values(case), values(case), values(case))
    return dataclasses.replace(run, **changes)


def test_a_run_as_the_interface_describes_it_passes():
    check("gradients", gradient_run(MATRIX, gradients={**values(MATRIX), "W": None}), MATRIX, "float32")
    once = gradient_run(MATRIX, values_after_repeat=None, gradients_repeat=None)
    check("differentiate_once", once, MATRIX, "float32")
    check("differentiate_once", gradient_run(MATRIX), MATRIX, "float32")  # the default: `gradients`, twice
    check("updates", UpdateRun([values(ADAM)] * 2, [values(ADAM)], {}), ADAM, "float32")
    accumulated = AccumulationRun("m", "sum", [values(ACCUMULATE)] * 3, values(ACCUMULATE), "c")
    check("accumulation", accumulated, ACCUMULATE, "float32")


@pytest.mark.parametrize(
    ("method", "case", "result", "problem"),
    [
        ("gradients", MATRIX, gradient_run(MATRIX, gradients=values(MATRIX, flat=True)), "has shape [9], not [3, 3]"),
        ("gradients", MATRIX, gradient_run(MATRIX, gradients={}), "gradients: variables [], not"),
        ("gradients", MATRIX, gradient_run(MATRIX, values_before=values(MATRIX, "float64")), "is float64, not float32"),
        ("gradients", MATRIX, gradient_run(MATRIX, gradients_repeat={"W": [[0.0] * 3] * 2}), "a list, not a float"),
        ("gradients", MATRIX, (0.0, {}), "returned a tuple, not a GradientRun"),
        ("gradients", MATRIX, gradient_run(MATRIX, gradients_repeat=None), "gradients_repeat: variables NoneType"),
        ("differentiate_once", MATRIX, gradient_run(MATRIX, gradients_repeat=None), "gradients_repeat: variables"),
        ("differentiate_once", MATRIX, gradient_run(MATRIX, gradients=None), "differentiate_once: gradients:"),
        ("updates", ADAM, UpdateRun([values(ADAM)], [values(ADAM)], {}), "1 values and 1 gradients for 1 steps"),
        ("accumulation", ACCUMULATE, AccumulationRun("m", "total", [], {}, "c"), "promise 'total'"),
        ("accumulation", ACCUMULATE, AccumulationRun("m", "sum", [values(ACCUMULATE)], {}, "c"), "1 micro-batch"),
    ],
)
def test_what_the_interface_does_not_allow_is_named(method, case, result, problem):
    with pytest.raises(ContractViolation, match=problem.replace("[", r"\[").replace("]", r"\]")):
        check(method, result, case, "float32")


class Flattening(Backend):
    """Gradients of the right values in the wrong shape, as an adapter that forgot to reshape returns them."""

    name = "flattening"

    def gradients(self, case, inputs, dtype, variant, device):
        return gradient_run(case, gradients=values(case, dtype, flat=True))


def test_an_adapter_that_flattens_gradients_is_an_error_that_names_it():
    item = ConformanceItem(ItemSpec("gradient.matches_reference", MATRIX, "torch", "eager", "cpu", "float32"), [])
    with pytest.raises(BackendError, match="the flattening adapter breaks its contract: gradients: gradients: W"):
        item.call("gradients", values(MATRIX), backend=Flattening())


@pytest.mark.parametrize("name", ["torch", "tensorflow", "jax"])
def test_one_differentiation_gives_the_first_of_two_and_leaves_the_repetition_out(name):
    from conformance import backends

    backend = backends.load(name)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    inputs = {spec.name: np.linspace(-1.0, 1.0, spec.size).reshape(spec.shape) for spec in MATRIX.tensors}
    for variant in backend.variants:
        twice = backend.gradients(MATRIX, inputs, "float64", variant, "cpu")
        once = backend.differentiate_once(MATRIX, inputs, "float64", variant, "cpu")
        check("differentiate_once", once, MATRIX, "float64")
        assert once.values_after_repeat is None and once.gradients_repeat is None
        np.testing.assert_array_equal(once.gradients["W"], twice.gradients["W"])
        np.testing.assert_array_equal(once.values_after["W"], twice.values_after["W"])
