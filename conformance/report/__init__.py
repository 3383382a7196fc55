"""The HTML compatibility report: merges result files (JSON Lines) into one self-contained page."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from conformance.cases import SHIPPED, load_cases
from conformance.report import cross_run
from conformance.report.loader import Record, Results, Run, load_results
from conformance.report.render import render_report
from conformance.results import SCHEMA, clean

__all__ = ["Record", "ReportSummary", "Results", "Run", "load_results", "render_report", "write_report"]


@dataclass(frozen=True)
class ReportSummary:
    """What a caller (the CLI, CI) needs to know about a written report."""

    output: Path
    records: int
    counts: dict[str, int]
    warnings: list[str]
    size_bytes: int
    unexplained_across_runs: int  # cross_run comparisons that failed


def write_report(
    paths: list[Path],
    output: Path,
    merged: Path | None = None,
    case_dirs: tuple[Path, ...] = (),
    processes: int = 1,
) -> ReportSummary:
    """Reads `paths`, compares their observations (cross_run, with the shipped cases and those of `case_dirs`, in
    `processes` processes), writes the page to `output` and, when asked, every record to `merged` (JSON Lines);
    OSError if a file cannot be read or written, CaseError if a case file is invalid."""
    results = load_results(paths)
    derived = set(cross_run.COMPARED.values())
    kept = [record for record in results.records if record.property not in derived]  # comparisons are made anew
    cases = [case for directory in (SHIPPED, *case_dirs) for case in load_cases([directory])]
    compared = cross_run.compare_observations(kept, cases, processes)
    results.records = kept + compared
    if merged is not None:
        write_merged(results, merged)
    page = render_report(results).encode("utf-8")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(page)
    counts = Counter(record.outcome for record in results.records)
    failed = sum(record.outcome == "fail" for record in compared)
    return ReportSummary(output, len(results.records), dict(counts), list(results.warnings), len(page), failed)


def write_merged(results: Results, path: Path) -> None:
    """Every run's header, then every record (the comparisons' included), readable by `load_results`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for run in results.runs:
            file.write(json.dumps(clean({**run.header, "schema": SCHEMA, "kind": "run", "run_id": run.run_id})) + "\n")
        for record in results.records:
            raw = {key: value for key, value in asdict(record).items() if key != "source"}
            file.write(json.dumps(clean({"schema": SCHEMA, "kind": "result", **raw}), allow_nan=False) + "\n")
