"""Known framework failures are data with a signature: only a failure with that signature is the known one, any
other failure of the same item is a `fail`, and an entry that matched nothing is reported as stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import faults
from conformance.known_failures import KnownFailure, KnownFailureError, load, parse
from conformance.tolerance import compare, worst

ROOT = Path(__file__).resolve().parents[2]
ENTRY = {
    "property": "accumulation.native",
    "backend": "jax",
    "dtype": "float64",
    "where": "accumulated *",
    "max_relative_error": 1e-6,
    "reason": "float32 accumulator",
}


def test_the_shipped_file_loads():
    assert isinstance(load(ROOT / "conformance" / "known_failures.toml"), list)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"known": [{k: v for k, v in ENTRY.items() if k != "where"}]}, "f.toml: known[0].where: missing"),
        ({"known": [{**ENTRY, "max_relative_error": "big"}]}, "known[0].max_relative_error: has the wrong type"),
        ({"known": [{**ENTRY, "max_relative_error": 0}]}, "known[0].max_relative_error: must be a positive finite"),
        ({"known": [{**ENTRY, "colour": "red"}]}, "known[0].colour: unknown field"),
        ({"known": [ENTRY, 3]}, "known[1]: is not a table"),
        ({"known": ENTRY}, "known: is not an array of tables"),
        ({"failures": []}, "failures: unknown field"),
    ],
)
def test_a_malformed_entry_is_one_line_naming_the_field(document, problem):
    with pytest.raises(KnownFailureError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse(document, "f.toml")


def test_a_file_that_is_not_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[known]\n", encoding="utf-8")
    with pytest.raises(KnownFailureError, match="bad.toml: not valid TOML"):
        load(path)


def test_the_signature_is_where_and_how_much():
    entry = KnownFailure(**{**ENTRY, "case": "accumulation/*"})
    item = ("accumulation.native", "jax", "float64", "accumulation/sum-two-micro-batches", "jit", "cpu")
    assert entry.applies_to(*item)
    assert not entry.applies_to("accumulation.native", "jax", "float32", *item[3:])
    assert not entry.applies_to("accumulation.native", "torch", *item[2:])
    assert not entry.applies_to(*item[:3], "seed/accumulate-sgd", *item[4:])
    small = compare("accumulated x (mean)", 1.0 + 1e-7, 1.0, 1e-12)
    large = compare("accumulated x (mean)", 1.01, 1.0, 1e-12)
    elsewhere = compare("step 1: x", 1.0 + 1e-7, 1.0, 1e-12)
    assert entry.matches(small) and not entry.matches(large) and not entry.matches(elsewhere)


def test_an_entry_may_name_the_variants_and_devices_it_applies_to():
    """A bug of one way of running a framework (torch's fused optimizers, an XLA step) or of one device."""
    fused = KnownFailure(**{**ENTRY, "backend": "torch", "variant": "fused", "device": "cuda*"})
    item = ("accumulation.native", "torch", "float64", "accumulation/sum-two-micro-batches")
    assert fused.applies_to(*item, "fused", "cuda")
    assert not fused.applies_to(*item, "for-loop", "cuda")
    assert not fused.applies_to(*item, "fused", "cpu")
    parsed = parse({"known": [{**ENTRY, "variant": "xla"}]}, "f.toml")[0]
    assert parsed.variant == "xla" and parsed.device == "*"
    with pytest.raises(KnownFailureError, match=r"known\[0\]\.variant: has the wrong type"):
        parse({"known": [{**ENTRY, "variant": 3}]}, "f.toml")


def _run_with_known(tmp_path: Path, max_relative_error: float) -> tuple[int, list[dict]]:
    """A planted 0.1% gradient error on torch, and a known-failures file whose entry allows `max_relative_error`."""
    known = tmp_path / "known.toml"
    known.write_text(
        f'[[known]]\nproperty = "gradient.matches_reference"\nbackend = "torch"\nwhere = "grad *"\n'
        f'max_relative_error = {max_relative_error}\nreason = "planted: gradients 0.1% too large"\n',
        encoding="utf-8",
    )
    results = tmp_path / "results.jsonl"
    environment = {
        **os.environ,
        "CONFORMANCE_KNOWN_FAILURES": str(known),
        faults.FAULT_ENVIRONMENT: "scaled-gradients:torch",
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "tests/conformance/test_gradients.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--backend=torch",
            f"--cases={ROOT / 'conformance/shipped_cases/seed/linear-square.toml'}",
            "--dtype=float64",
            "-k",
            "test_matches_reference and eager",
            f"--results={results}",
            "--hypothesis-profile=conformance-ci",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    records = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()[1:]]
    return completed.returncode, records


def test_a_failure_with_the_signature_is_known_and_any_other_is_a_failure(tmp_path):
    pytest.importorskip("torch")
    code, [record] = _run_with_known(tmp_path, 2e-3)
    assert code == 0 and record["outcome"] == "fail" and record["message"].startswith("known: planted")
    code, [record] = _run_with_known(tmp_path, 1e-4)  # the same fault is larger than the entry allows
    assert code == 1 and record["outcome"] == "fail" and not record["message"].startswith("known")
    assert record["counterexample"] is not None


def test_every_failing_value_must_have_the_signature():
    """A small known failure in one variable must not hide a large one in another, nor in the same array."""
    entry = KnownFailure(**ENTRY)
    small = compare("accumulated a (mean)", np.array([1.0 + 5e-7]), np.array([1.0]), 1e-12)
    large = compare("accumulated b (mean)", np.array([1.5]), np.array([1.0]), 1e-12)
    assert entry.matches(worst([small])) and not entry.matches(worst([small, large]))
    # the element furthest out of bound is 5e-7 off, relatively; another is 50% off
    mixed = compare(
        "accumulated a (mean)", np.array([1e-6 + 5e-13, 1.5]), np.array([1e-6, 1.0]), np.array([1e-18, 1e-5])
    )
    assert mixed.where == "accumulated a (mean)[0]" and not entry.matches(mixed)


def test_brackets_in_a_location_are_literal():
    entry = KnownFailure(**{**ENTRY, "where": "accumulated w (mean)[0]"})
    assert entry.matches(compare("accumulated w (mean)", np.array([1.0 + 1e-7, 1.0]), np.array([1.0, 1.0]), 1e-12))
    assert not entry.matches(compare("accumulated w (mean)", np.array([1.0, 1.0 + 1e-7]), np.array([1.0, 1.0]), 1e-12))
