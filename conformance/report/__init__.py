"""The HTML compatibility report: merges result files (JSON Lines) into one self-contained page."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from conformance.report.loader import Record, Results, Run, load_results
from conformance.report.render import render_report

__all__ = ["Record", "ReportSummary", "Results", "Run", "load_results", "render_report", "write_report"]


@dataclass(frozen=True)
class ReportSummary:
    """What a caller (the CLI, CI) needs to know about a written report."""

    output: Path
    records: int
    counts: dict[str, int]
    warnings: list[str]
    size_bytes: int


def write_report(paths: list[Path], output: Path) -> ReportSummary:
    """Reads `paths`, writes the page to `output` (creating its folder); OSError if a file cannot be read."""
    results = load_results(paths)
    page = render_report(results).encode("utf-8")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(page)
    counts = Counter(record.outcome for record in results.records)
    return ReportSummary(output, len(results.records), dict(counts), list(results.warnings), len(page))
