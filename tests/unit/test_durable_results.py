"""A run cut off by Ctrl-C, SIGTERM or SIGKILL leaves a results file that `conformance report` reads whole.

Two healthy items finish, then the crashing backend hangs in the third; the test signals the run's process
group, as a terminal's Ctrl-C or a cancelled CI job does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_crash_isolation import run_conformance

from conformance.report.cli import main_report


def wait_until(condition, run: subprocess.Popen, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert run.poll() is None, f"the run ended early:\n{run.communicate()[0]}"
        assert time.monotonic() < deadline, f"not {what} after {seconds} s"
        time.sleep(0.1)


def records_in(path: Path) -> int:
    return path.read_text(encoding="utf-8").count('"kind": "result"') if path.is_file() else 0


@pytest.mark.parametrize("interruption", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_an_interrupted_run_leaves_a_readable_results_file(tmp_path, capsys, interruption):
    results, report, hanging = tmp_path / "results.jsonl", tmp_path / "report.html", tmp_path / "hanging"
    marker = {"CRASHING_BACKEND_HANGING_MARKER": str(hanging)}
    run = run_conformance(
        "-k", "values_unchanged and (1-healthy or 4-hang)", "--results", str(results), environment=marker
    )
    try:
        wait_until(lambda: records_in(results) >= 2, run, "two records")
        wait_until(hanging.exists, run, "hanging")  # interrupted inside the hang, not between items
        os.killpg(run.pid, interruption)
        output, _ = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()

    assert run.returncode != 0
    if interruption != signal.SIGKILL:  # pytest finished: it printed its summary and closed the file
        assert "KeyboardInterrupt" in output and "2 passed" in output, output
    assert results.read_text(encoding="utf-8").endswith("\n")
    assert main_report([str(results), "-o", str(report)]) == 0
    assert capsys.readouterr().err == ""
    html = report.read_text(encoding="utf-8")
    assert "healthy: the exact answer" in html and "hang: waits forever" not in html


def test_the_reader_knows_every_field_the_writer_writes():
    """One schema: `results.ResultRecord` is what is written; the report's `Record` reads each of its fields."""
    import dataclasses

    from conformance.report.loader import Record
    from conformance.results import ResultRecord

    written = {field.name for field in dataclasses.fields(ResultRecord)}
    read = {field.name for field in dataclasses.fields(Record)}
    assert written <= read and read - written == {"run_id", "source"}
