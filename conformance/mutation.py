"""`conformance mutate`: the suite's sensitivity, measured by running it against faults planted in each framework.

For every fault of `conformance.faults` (and every backend it applies to), the property tests run in a fresh
pytest process on the fault's cases with the fault planted; the same run without the fault is the baseline. A
fault is caught when some (case, property, variant, dtype) fails that passed (or was an explained difference) in
the baseline. Exit 0 when every fault is caught, 1 when one is not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conformance import faults
from conformance.cli import PROPERTY_TESTS
from conformance.pytest_plugin import SHIPPED_CASES


@dataclass(frozen=True)
class Verdict:
    fault: faults.Fault
    caught_by: tuple[str, ...]  # properties that failed with the fault and passed without it
    errors: int  # items that crashed with the fault
    items: int
    caught_in: tuple[str, ...] = ()  # the backend's variants with an item that caught it
    ran_in: tuple[str, ...] = ()  # the variants with an item of a property meant to catch it, healthy without it

    @property
    def missed_in(self) -> tuple[str, ...]:
        return tuple(variant for variant in self.ran_in if variant not in self.caught_in)

    @property
    def caught(self) -> bool:
        """Caught by some property, in every variant that ran healthy items of the properties meant to catch it (a
        fault of Keras' gradient_accumulation_steps cannot show in a training step that does not use it)."""
        return bool(self.caught_by) and not self.missed_in


def run_suite(
    backend: str, cases: Sequence[str], results: Path, profile: str, fault_key: str | None, keyword: str | None = None
) -> dict:
    """The property tests for `backend` on `cases` (those `keyword` selects, as pytest -k), in a fresh process;
    (case, property, variant, dtype) -> outcome."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(PROPERTY_TESTS),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-profile=conformance-{profile}",
        f"--backend={backend}",
        f"--results={results}",
        *[f"--cases={SHIPPED_CASES / f'{case}.toml'}" for case in cases],
        *(["-k", keyword] if keyword else []),
    ]
    environment = {**os.environ, "CONFORMANCE_PROFILE": profile, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop(faults.FAULT_ENVIRONMENT, None)
    if fault_key:
        environment[faults.FAULT_ENVIRONMENT] = fault_key
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if completed.returncode not in (0, 1) or not results.is_file():
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"pytest exited {completed.returncode} for {fault_key or backend + ' baseline'}: {tail[0]}")
    outcomes = {}
    for line in results.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "result":
            outcomes[(record["case"], record["property"], record["variant"], record["dtype"])] = record["outcome"]
    return outcomes


def verdict(fault: faults.Fault, planted: dict, baseline: dict) -> Verdict:
    healthy = ("pass", "divergent")  # divergent: an explained difference, e.g. Keras averaging where torch sums
    catching = [key for key, outcome in planted.items() if outcome == "fail" and baseline.get(key) in healthy]
    errors = sum(outcome == "error" for outcome in planted.values())
    return Verdict(
        fault,
        tuple(sorted({key[1] for key in catching})),
        errors,
        len(planted),
        caught_in=tuple(sorted({key[2] for key in catching})),
        ran_in=tuple(
            sorted(
                {
                    key[2]
                    for key in planted
                    if key[1] in fault.expected
                    and baseline.get(key) in healthy
                    and (not fault.variants or key[2] in fault.variants)
                }
            )
        ),
    )


def table(verdicts: Sequence[Verdict]) -> str:
    """A Markdown table, one row per fault and backend; a variant that ran healthy items of the properties meant
    to catch the fault and caught nothing is named as missed (and the fault counts as not caught)."""
    rows = [
        "| fault | backend | what it does | properties run | caught by | family | variants | items |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        caught = ", ".join(v.caught_by) if v.caught_by else "**NOT CAUGHT**"
        if v.errors:
            caught += f" ({v.errors} items crashed)"
        families = ", ".join(sorted({name.split(".")[0] for name in v.caught_by})) or "-"
        variants = ", ".join(v.caught_in) or "-"
        if v.missed_in:
            variants += f"; **missed in {', '.join(v.missed_in)}**"
        rows.append(
            f"| {v.fault.name} | {v.fault.backend} | {v.fault.description} | {v.fault.selected} | "
            f"{caught} | {families} | {variants} | {v.items} |"
        )
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance mutate", description="Run the suite against planted faults.")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME", help="repeatable; default: all")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help=f"repeatable; default: all ({', '.join(sorted({f.name for f in faults.FAULTS}))})",
    )
    parser.add_argument("--profile", default="ci", help="Hypothesis profile (default: ci, derandomized)")
    parser.add_argument("-j", dest="jobs", type=int, default=2, metavar="N", help="pytest processes at once")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep every run's results under DIR")
    parser.add_argument("-o", dest="output", type=Path, metavar="FILE", help="also write the table to FILE")
    return parser


def main_mutate(argv: Sequence[str]) -> int:
    arguments = _parser().parse_args(argv)  # a usage error exits 2 through `conformance.cli.main`
    from conformance import backends

    selected = [
        f
        for f in faults.FAULTS
        if (not arguments.backend or f.backend in arguments.backend)
        and (not arguments.fault or f.name in arguments.fault)
    ]
    unavailable = {f.backend: backends.load(f.backend).unavailable_reason() for f in selected}
    for name, reason in sorted(unavailable.items()):
        if reason:
            print(f"conformance mutate: skipping {name}: {reason}", file=sys.stderr)
    selected = [f for f in selected if not unavailable[f.backend]]
    if not selected:
        print("conformance mutate: no fault selected, or none of its backends is installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        directory = arguments.keep or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        cases = {
            backend: sorted({c for f in selected if f.backend == backend for c in f.cases})
            for backend in {f.backend for f in selected}
        }
        with ThreadPoolExecutor(max(1, arguments.jobs)) as pool:
            baselines = {
                backend: pool.submit(
                    run_suite, backend, cases[backend], directory / f"baseline-{backend}.jsonl", arguments.profile, None
                )
                for backend in cases
            }
            planted = [
                pool.submit(
                    run_suite,
                    f.backend,
                    f.cases,
                    directory / f"{f.name}-{f.backend}.jsonl",
                    arguments.profile,
                    f.key,
                    f.keyword,
                )
                for f in selected
            ]
            try:
                verdicts = [
                    verdict(f, run.result(), baselines[f.backend].result())
                    for f, run in zip(selected, planted, strict=True)
                ]
            except RuntimeError as error:
                print(f"conformance mutate: {error}", file=sys.stderr)
                return 2
    text = table(verdicts)
    print(text)
    for name, reason in faults.NOT_PLANTED.items():
        print(f"not planted: {name[0]} on {name[1]}: {reason}")
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(text + "\n", encoding="utf-8")
    return 0 if all(v.caught for v in verdicts) else 1
