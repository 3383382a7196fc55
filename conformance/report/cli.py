"""`conformance report FILE... [-o FILE]`: the command-line glue around `write_report`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.cases import CaseError
from conformance.report import write_report
from conformance.report.outcomes import ORDER

DEFAULT_OUTPUT = Path("reports/index.html")


def main_report(argv: Sequence[str] | None = None) -> int:
    """0 when the report was written; 1 when it was, and columns compared across runs differ unexplained; 2, with one
    line on stderr, when an input cannot be read."""
    parser = argparse.ArgumentParser(
        prog="conformance report", description="Merge result files (JSON Lines) into one HTML report."
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="result files written by `conformance run`")
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, metavar="FILE", help=f"default: {DEFAULT_OUTPUT}"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write every record, the comparisons' included (JSON Lines)"
    )
    parser.add_argument(
        "--cases",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="case files of the runs besides the shipped ones (repeatable): updates are compared with them",
    )
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    for path in arguments.files:
        if not path.is_file():
            print(f"conformance report: {path}: {'not a file' if path.exists() else 'no such file'}", file=sys.stderr)
            return 2
    try:
        summary = write_report(
            arguments.files, arguments.output, arguments.results, tuple(arguments.cases), os.cpu_count() or 1
        )
    except CaseError as error:
        print(f"conformance report: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"conformance report: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
    for warning in summary.warnings:
        print(f"warning: {' '.join(warning.splitlines())}", file=sys.stderr)
    counts = ", ".join(f"{summary.counts[outcome]} {outcome}" for outcome in ORDER if outcome in summary.counts)
    results = f"{summary.records} result{'s' if summary.records != 1 else ''}"
    print(f"{summary.output}: {results} ({counts or 'none'}), {summary.size_bytes // 1024} KiB")
    if summary.unexplained_across_runs:
        print(f"{summary.unexplained_across_runs} unexplained difference(s) between columns compared at probes")
        return 1
    return 0
