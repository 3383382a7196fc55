"""A backend cannot declare its way to a pass: conventions outside the admissible range, or an adapter that cannot
be loaded, are refused when the backend loads, in one line naming the backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import backends
from conformance.cli import PROPERTY_TESTS, main_run
from conformance.pytest_plugin import SHIPPED_CASES
from conformance.reference.conventions import KinkConventions

STEEP = """
from conformance.backends.base import Backend
from conformance.reference.conventions import KinkConventions


class SteepAbs(Backend):
    name = "steep"
    conventions = KinkConventions(abs_slope_at_zero=7.0)
"""


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """Registers a backend that declares abs' slope at 0 to be 7 through CONFORMANCE_BACKENDS, as others would."""
    (tmp_path / "steep_backend.py").write_text(STEEP, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONFORMANCE_BACKENDS", "steep=steep_backend:SteepAbs,missing=no_such_module:Nothing")
    monkeypatch.setattr(backends, "_loaded", {})
    yield
    sys.modules.pop("steep_backend", None)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"abs_slope_at_zero": 7.0}, "abs_slope_at_zero = 7.0 is outside [-1, 1]"),
        ({"abs_slope_at_zero": float("nan")}, "abs_slope_at_zero = nan is not a number"),
        ({"maximum_tie_to_first": 1.5}, "maximum_tie_to_first = 1.5 is outside [0, 1]"),
        ({"minimum_tie_to_first": -0.5}, "minimum_tie_to_first = -0.5 is outside [0, 1]"),
        ({"softplus_linear_above": 2.0}, "softplus_linear_above = 2.0 is below 14.0"),
    ],
)
def test_inadmissible_conventions_are_named(values, problem):
    assert problem in KinkConventions(**values).inadmissible()


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"abs_slope_at_zero": 1.0},
        {"abs_slope_at_zero": -1.0},
        {"maximum_tie_to_first": 1.0},
        {"softplus_linear_above": 20.0},
    ],
)
def test_every_honest_convention_is_admissible(values):
    assert KinkConventions(**values).inadmissible() is None


def test_the_builtin_backends_are_admissible():
    for name in ("torch", "tensorflow", "jax"):
        assert backends.load(name).conventions.inadmissible() is None


def test_a_backend_with_inadmissible_conventions_is_refused_in_one_line(registered, capsys):
    with pytest.raises(backends.UnknownBackend, match="backend 'steep': conventions: abs_slope_at_zero = 7.0"):
        backends.load("steep")
    assert main_run(["--backend", "steep"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "conformance run: backend 'steep': conventions: abs_slope_at_zero = 7.0 is outside [-1, 1], the "
        "subgradients of |x| at 0"
    ]


def test_a_backend_that_cannot_be_imported_is_one_line(registered, capsys):
    assert main_run(["--backend", "missing"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("conformance run: backend 'missing': no_such_module:Nothing cannot")


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GRADIENTS_ONLY = "gradients-only=gradients_only_backend:GradientsOnlyBackend"


def _records(path: Path) -> dict[tuple, tuple]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {
        (r["case"], r["property"], r["backend"], r["dtype"]): (r["outcome"], r["message"])
        for r in records
        if r.get("kind") == "result"
    }


def test_an_adapter_that_declares_no_optimizers_is_not_applicable_to_updates_and_leaves_torch_alone(tmp_path):
    """A gradients-only adapter beside torch over update and accumulation cases: its update and accumulation items
    are not applicable with the reason, none is an error, and torch's records are those of a run without it (but for
    its gradient agreement, which gains a partner)."""
    pytest.importorskip("torch")
    chosen = ("seed/linear-square", "seed/adam-step", "seed/accumulate-sgd")
    cases = [f"--cases={SHIPPED_CASES / case}.toml" for case in chosen]
    environment = {**os.environ, "CONFORMANCE_BACKENDS": GRADIENTS_ONLY, "PYTHONPATH": str(FIXTURES)}
    runs = {}
    for label, names in (("alone", ["torch"]), ("beside", ["torch", "gradients-only"])):
        results = tmp_path / f"{label}.jsonl"
        command = [sys.executable, "-m", "pytest", str(PROPERTY_TESTS), "-q", "-p", "no:cacheprovider", *cases]
        command += [f"--results={results}", "--hypothesis-seed=1", "--dtype=float32"]
        command += [f"--backend={name}" for name in names]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
        runs[label] = _records(results)
    beside = runs["beside"]
    assert "error" not in {outcome for outcome, _ in beside.values()}
    theirs = {key: value for key, value in beside.items() if key[2] == "gradients-only"}
    updates = {key: value for key, value in theirs.items() if key[1].startswith(("update.", "accumulation.native"))}
    assert updates and all(outcome == "not_applicable" for outcome, _ in updates.values())
    assert any("declares no native optimizers" in message for _, message in updates.values())
    assert any(outcome == "pass" for key, (outcome, _) in theirs.items() if key[1] == "gradient.matches_reference")

    def torch_outcomes(records: dict) -> dict:
        return {
            key: outcome
            for key, (outcome, _) in records.items()
            if key[2] == "torch" and key[1] != "gradient.agrees_across_backends"
        }

    assert torch_outcomes(beside) == torch_outcomes(runs["alone"])
