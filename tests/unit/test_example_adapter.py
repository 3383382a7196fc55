"""The adapter guide's example, a backend for HIPS autograd in docs/examples/, registered from outside the core as
a third party would: beside torch it gives no error record, its gradients and its Adam steps pass, what it cannot
run natively is not applicable with the reason, and torch's outcomes are those of a run without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli import PROPERTY_TESTS
from conformance.pytest_plugin import SHIPPED_CASES

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
REGISTERED = "autograd=autograd_backend:AutogradBackend"
CASES = ("losses/abs-kink", "losses/maximum-minimum", "seed/adam-step", "optimizers/sgd-plain")


def run(tmp_path: Path, names: list[str]) -> dict[tuple, tuple]:
    results = tmp_path / f"{'-'.join(names)}.jsonl"
    command = [sys.executable, "-m", "pytest", str(PROPERTY_TESTS), "-q", "-p", "no:cacheprovider"]
    command += [f"--cases={SHIPPED_CASES / case}.toml" for case in CASES]
    command += [f"--results={results}", "--hypothesis-seed=1", "--dtype=float32"]
    command += [f"--backend={name}" for name in names]
    environment = {**os.environ, "CONFORMANCE_BACKENDS": REGISTERED, "PYTHONPATH": str(EXAMPLES)}
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-2000:]
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    return {
        (r["case"].rsplit("/", 1)[-1], r["property"], r["backend"]): (r["outcome"], r["message"])
        for r in records
        if r["kind"] == "result"
    }


def test_the_autograd_example_runs_beside_torch(tmp_path):
    pytest.importorskip("autograd")
    pytest.importorskip("scipy")
    pytest.importorskip("torch")
    beside, alone = run(tmp_path, ["torch", "autograd"]), run(tmp_path, ["torch"])
    assert "error" not in {outcome for outcome, _ in beside.values()}
    autograd = {key: outcome for key, (outcome, _) in beside.items() if key[2] == "autograd"}
    assert autograd[("abs-kink", "gradient.matches_reference", "autograd")] == "pass"  # |x|'(0) = 0, declared
    assert autograd[("maximum-minimum", "gradient.agrees_across_backends", "autograd")] == "pass"  # ties halved
    assert autograd[("adam-step", "update.matches_reference", "autograd")] == "pass"
    assert autograd[("adam-step", "update.agrees_across_backends", "autograd")] == "pass"
    outcome, message = beside[("sgd-plain", "update.matches_reference", "autograd")]
    assert outcome == "not_applicable" and "autograd declares no native optimizer for 'sgd'" in message

    def torch_outcomes(records: dict) -> dict:  # its gradient and update agreement gain a partner
        return {key: outcome for key, (outcome, _) in records.items() if key[2] == "torch" and "agrees" not in key[1]}

    assert torch_outcomes(beside) == torch_outcomes(alone)
