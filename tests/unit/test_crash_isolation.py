"""A framework that segfaults, aborts or hangs costs one `error` record, not the run.

`conformance run` runs the property tests of four tiny cases against tests/fixtures/crashing_backend.py, which
segfaults, aborts or hangs on three of them; no framework is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conformance import backends
from conformance.cli import main_run

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CRASHING = "crashing=crashing_backend:CrashingBackend"


def run_conformance(*arguments: str, environment: dict[str, str] | None = None) -> subprocess.Popen:
    """`conformance run` with the crashing backend registered, in its own process group (tests may signal it)."""
    environment = {**os.environ, "CONFORMANCE_BACKENDS": CRASHING, "PYTHONPATH": str(FIXTURES), **(environment or {})}
    command = [
        sys.executable,
        "-c",
        # Ctrl-C as in a terminal: the run may inherit it ignored or blocked from this process (a pytest-xdist worker
        # that earlier tests left so ignored the SIGINT test's Ctrl-C), and its workers inherit it from the run
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); "
        "from conformance.cli import main; raise SystemExit(main())",
        "run",
        "--backend",
        "crashing",
        "--cases",
        str(FIXTURES / "crash_cases"),
        "--profile",
        "smoke",
        *arguments,
    ]
    return subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def result_records(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {record["case"]: record for record in lines if record["kind"] == "result"}


def test_crashes_and_hangs_are_error_records_and_the_run_goes_on(tmp_path):
    results = tmp_path / "results.jsonl"
    run = run_conformance("-k", "values_unchanged and float64", "--item-timeout", "2", "--results", str(results))
    output, _ = run.communicate(timeout=120)

    assert run.returncode == 1, output
    records = result_records(results)
    assert {case: (record["outcome"], record["message"]) for case, record in records.items()} == {
        "1-healthy": ("pass", None),
        "2-abort": ("error", "worker crashed: signal 6 (SIGABRT)"),
        "3-segfault": ("error", "worker crashed: signal 11 (SIGSEGV)"),
        "4-hang": ("error", "timed out after 2 s"),
    }, output
    assert {(record["property"], record["backend"], record["dtype"]) for record in records.values()} == {
        ("differentiation.values_unchanged", "crashing", "float64")
    }
    assert records["4-hang"]["elapsed_s"] >= 2
    assert "worker crashed: signal 11 (SIGSEGV)" in output  # the terminal says it too


def test_an_environment_variable_registers_a_backend_for_one_run(monkeypatch):
    monkeypatch.setenv("CONFORMANCE_BACKENDS", f" {CRASHING} , other=some.module:Other")
    assert {"crashing", "other", "torch"} <= set(backends.known_names())


def test_a_malformed_registration_is_a_one_line_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("CONFORMANCE_BACKENDS", "crashing_backend:CrashingBackend")
    assert main_run(["--backend", "torch"]) == 2
    assert capsys.readouterr().err == (
        "conformance run: CONFORMANCE_BACKENDS: 'crashing_backend:CrashingBackend' is not name=module:Class\n"
    )


def test_conformance_run_needs_a_worker_process(capsys):
    assert main_run(["-n", "0"]) == 2
    message = "conformance run: -n: '0' is neither a number of workers (at least 1) nor 'auto'\n"
    assert capsys.readouterr().err == message
