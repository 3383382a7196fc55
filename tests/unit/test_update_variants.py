"""A framework's ways of running a training step are variants of the update items: torch's for-loop, foreach and
fused optimizers each run as asked, and the plugin makes one column of each."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest

from conformance import backends
from conformance.backends import native_optimizers
from conformance.backends.base import NotApplicable
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


@pytest.mark.parametrize(
    ("variant", "asked"), [("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]
)
def test_each_torch_variant_builds_the_implementation_it_names(variant, asked):
    import torch

    from conformance.backends.torch import OPTIMIZER_IMPLEMENTATIONS

    parameter = torch.zeros(2, requires_grad=True)
    optimizer = native_optimizers.torch_optimizer("adam", {"lr": 0.1}, [parameter], OPTIMIZER_IMPLEMENTATIONS[variant])
    assert {name: optimizer.defaults[name] for name in asked} == asked


def test_the_compiled_models_step_runs_torchs_default_optimizer():
    import torch

    from conformance.backends.torch import TRAINING_STEPS

    parameter = torch.zeros(2, requires_grad=True)
    optimizer = native_optimizers.torch_optimizer("adam", {"lr": 0.1}, [parameter], TRAINING_STEPS["compile"])
    assert optimizer.defaults["foreach"] is None and optimizer.defaults["fused"] is None  # torch chooses


def test_a_rule_without_a_fused_implementation_is_not_applicable_with_the_reason():
    import torch

    with pytest.raises(NotApplicable, match="torch.optim.RMSprop has no fused implementation"):
        native_optimizers.torch_optimizer("rmsprop", {"lr": 0.1}, [torch.zeros(1)], {"fused": True})


def test_torch_runs_updates_in_every_variant_and_refuses_one_it_does_not_have():
    backend = backends.load("torch")
    assert backend.training_step_variants() == ("for-loop", "foreach", "fused", "compile")
    assert backend.variants == ("eager", "compile")  # gradients: eager, and the loss under torch.compile
    case = load_case(SHIPPED_CASES / "seed" / "adam-step.toml")
    inputs = {spec.name: np.full(spec.shape, 0.5) for spec in case.tensors}
    finals = [
        backend.updates(case, inputs, {}, "float64", variant, "cpu").values[-1]
        for variant in backend.training_step_variants()
    ]
    assert all(set(final) == set(finals[0]) for final in finals)
    with pytest.raises(ValueError, match="not 'eager'"):
        backend.updates(case, inputs, {}, "float64", "eager", "cpu")


def test_the_bias_correction_bound_follows_the_implementation():
    backend = backends.load("torch")
    # for-loop and foreach compute 1 - beta ** step in Python floats; the fused kernel gets the conservative bound
    assert not backend.decay_rates_in_dtype("cpu", "for-loop") and not backend.decay_rates_in_dtype("cpu", "foreach")
    assert backend.decay_rates_in_dtype("cpu", "fused") and backend.decay_rates_in_dtype("cpu")
    assert not backend.decay_rates_in_dtype("cpu", "compile")  # torch's default implementation: the for-loop


def test_update_items_are_a_column_per_variant_and_comparisons_run_the_first():
    from conformance.cli import PROPERTY_TESTS

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(PROPERTY_TESTS),
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "--backend=torch",
            f"--cases={SHIPPED_CASES / 'seed' / 'adam-step.toml'}",
            f"--cases={SHIPPED_CASES / 'accumulation' / 'sum-two-micro-batches.toml'}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # node ids: ...::test_x[<case>-torch-<variant>-cpu-<dtype>]
    collected = {
        (test, parameters.split("-torch-", 1)[1].rsplit("-cpu-", 1)[0])
        for test, parameters in re.findall(r"::(test_\w+)\[([^\]]+-torch-[^\]]+)\]", completed.stdout)
    }
    variants = {test: {v for t, v in collected if t == test} for test, _ in collected}
    for test in ("test_update_matches_reference", "test_updates_at_probes"):
        assert variants[test] == {"for-loop", "foreach", "fused", "compile"}
    assert variants["test_update_agrees_across_backends"] == {"for-loop"}
    assert variants["test_matches_reference"] == {"eager", "compile"}  # gradient items: every variant
    for test in ("test_accumulation_native", "test_accumulation_at_probes"):
        assert variants[test] == {"eager"}


def test_an_adapter_written_before_update_variants_keeps_its_one_argument_declaration():
    from conformance.backends.base import Backend, decay_rates_in_dtype_of

    class Older(Backend):
        def decay_rates_in_dtype(self, device):
            return device == "cpu"

    assert decay_rates_in_dtype_of(Older(), "cpu", "default") is True
    assert decay_rates_in_dtype_of(backends.load("torch"), "cpu", "for-loop") is False
