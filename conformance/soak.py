"""`conformance soak`: the whole suite under several Hypothesis seeds, to show it raises no false alarms.

Each seed is one `conformance run` in its own process (its own results file); the table gives the outcomes per
seed, and the exit status is 0 only when every run was: no unexplained failure under any seed. Failures listed
with a known failure's signature are counted apart, as the runs count them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from conformance.results import OUTCOMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance soak", description="Run the suite under several seeds.")
    parser.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds 1..N (default 5)")
    parser.add_argument("--first-seed", type=int, default=1, metavar="S", help="start at S instead of 1")
    parser.add_argument("--profile", default="thorough", help="Hypothesis profile (default: thorough)")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME", help="repeatable; default: all")
    parser.add_argument("--cases", action="append", default=[], metavar="PATH", help="repeatable; default: shipped")
    parser.add_argument("-n", dest="workers", default="2", metavar="N", help="pytest-xdist workers per run")
    parser.add_argument("--results-dir", type=Path, default=Path("reports/soak"), metavar="DIR")
    parser.add_argument("--report", type=Path, metavar="FILE", help="also merge every seed's results into FILE")
    return parser


def outcome_counts(results: Path) -> Counter:
    """Outcomes of a results file; a failure with a known failure's signature counts as 'known'."""
    counts: Counter = Counter()
    if not results.is_file():
        return counts
    for line in results.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # an interrupted run's last line
            continue
        if record.get("kind") == "result":
            known = record["outcome"] == "fail" and (record.get("message") or "").startswith("known: ")
            counts["known" if known else record["outcome"]] += 1
    return counts


def main_soak(argv: Sequence[str]) -> int:
    arguments = _parser().parse_args(argv)  # a usage error exits 2 through `conformance.cli.main`
    if arguments.seeds < 1:
        print("conformance soak: --seeds: must be at least 1", file=sys.stderr)
        return 2
    arguments.results_dir.mkdir(parents=True, exist_ok=True)
    columns = [*OUTCOMES, "known"]
    print(f"| seed | exit | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}", flush=True)
    files, worst = [], 0
    for seed in range(arguments.first_seed, arguments.first_seed + arguments.seeds):
        results = arguments.results_dir / f"seed-{seed}.jsonl"
        command = [
            sys.executable,
            "-m",
            "conformance",
            "run",
            f"--seed={seed}",
            f"--profile={arguments.profile}",
            f"--results={results}",
            "-n",
            arguments.workers,
            *[f"--backend={name}" for name in arguments.backend],
            *[f"--cases={path}" for path in arguments.cases],
        ]
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        code = subprocess.run(command, stdout=subprocess.DEVNULL, env=environment, check=False).returncode
        if code == 2:  # a usage or case-file error: the same for every seed (its line went to stderr)
            return 2
        counts = outcome_counts(results)
        print(f"| {seed} | {code} | {' | '.join(str(counts[c]) for c in columns)} |", flush=True)
        files.append(str(results))
        worst = max(worst, code)
    if arguments.report:
        from conformance.report.cli import main_report

        main_report([*files, "-o", str(arguments.report)])
    return worst
