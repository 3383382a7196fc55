"""The `conformance` command: `run` (the suite, exit codes as DESIGN.md fixes them), and the dispatch to `report`,
`soak`, `mutate` and `known-differences`.

run: 0 when nothing unexplained failed, 1 when something did, 2 on a usage or case-file error (one line).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.report.cli import main_report

PROPERTY_TESTS = Path(__file__).resolve().parent / "property_tests"
DEFAULT_RESULTS = Path("reports/results.jsonl")


COMMANDS = {  # imported only when called: `report` and `soak` need no framework
    "run": "conformance.cli:main_run",
    "report": "conformance.report.cli:main_report",
    "soak": "conformance.soak:main_soak",
    "mutate": "conformance.mutation:main_mutate",
    "known-differences": "conformance.known_differences:main_known_differences",
    "bench": "conformance.bench:main_bench",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        module_name, _, function_name = COMMANDS[argv[0]].partition(":")
        try:
            return getattr(importlib.import_module(module_name), function_name)(argv[1:])
        except SystemExit as exit_:  # argparse: after --help (0), or a usage error, already printed (2)
            return 0 if exit_.code == 0 else 2
    print(
        "usage: conformance run [options] | conformance report FILE... [-o FILE] | conformance soak [options] | "
        "conformance mutate [options] | conformance known-differences [RESULTS...] [-o FILE] | "
        "conformance bench [options]   (-h for each)",
        file=sys.stderr,
    )
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance run", description="Run the conformance suite.")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME", help="repeatable; default: all")
    parser.add_argument(
        "--cases",
        action="append",
        default=[],
        metavar="PATH",
        help="case file or directory, repeatable; 'shipped' names the shipped cases (the default)",
    )
    parser.add_argument(
        "--profile",
        default=os.environ.get("CONFORMANCE_PROFILE") or "default",
        help="the suite's Hypothesis profile: default, ci, thorough (default: $CONFORMANCE_PROFILE, else default)",
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, metavar="FILE")
    parser.add_argument("--report", type=Path, metavar="FILE", help="also write the HTML report to FILE")
    parser.add_argument(
        "-n",
        dest="workers",
        default="1",
        metavar="N",
        help="pytest-xdist workers, a number or 'auto' (default 1; at least 1: a crash ends one worker)",
    )
    parser.add_argument(
        "--item-timeout",
        type=float,
        metavar="SECONDS",
        help="an item running longer is an error and its worker is replaced (default 300; 0: none)",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest's -k: select items by name")
    parser.add_argument("--seed", metavar="SEED", help="Hypothesis seed")
    return parser


def main_run(argv: Sequence[str]) -> int:
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    from conformance.backends import UnknownBackend

    try:
        problem = _usage_problem(arguments)
    except UnknownBackend as error:  # CONFORMANCE_BACKENDS is malformed
        problem = str(error)
    if arguments.workers != "auto" and not (arguments.workers.isdigit() and int(arguments.workers) >= 1):
        problem = problem or f"-n: {arguments.workers!r} is neither a number of workers (at least 1) nor 'auto'"
    if problem:
        print(f"conformance run: {problem}", file=sys.stderr)
        return 2
    import pytest

    from conformance import profiles

    profile = profiles.short_name(arguments.profile)
    # the property tests as installed, whatever the directory: its own configuration files do not apply
    pytest_args = [
        str(PROPERTY_TESTS),
        f"--rootdir={PROPERTY_TESTS}",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::DeprecationWarning",
        "-W",  # this process imported the package and Hypothesis before pytest could rewrite their asserts
        "ignore::pytest.PytestAssertRewriteWarning",
        f"--hypothesis-profile={profiles.PREFIX}{profile}",
        f"--results={arguments.results}",
        "-o",
        "console_output_style=count",
    ]
    pytest_args += [f"--backend={name}" for name in arguments.backend]
    pytest_args += [f"--cases={path}" for path in arguments.cases]
    # always worker processes, so that a crashing framework ends one worker, not the run; xdist's default of 4
    # replacements per worker would stop a run in which one case crashes under each property and dtype
    pytest_args += ["-n", arguments.workers, "--max-worker-restart=100", "--dist=loadgroup"]
    if arguments.item_timeout is not None:
        pytest_args += [f"--item-timeout={arguments.item_timeout:g}"]
    if arguments.keyword:
        pytest_args += ["-k", arguments.keyword]
    if arguments.seed:
        pytest_args += [f"--hypothesis-seed={arguments.seed}"]
    os.environ[profiles.ENVIRONMENT_VARIABLE] = profile
    code = int(pytest.main(pytest_args))
    if arguments.report and arguments.results.is_file():
        case_dirs = [f"--cases={path}" for path in arguments.cases if path != "shipped"]
        report_code = main_report([str(arguments.results), "-o", str(arguments.report), *case_dirs])
        code = code if report_code == 0 and code != 5 else max(code, report_code)
    return {0: 0, 1: 1, 5: 0}.get(code, 2 if code == 4 else 1)


def _usage_problem(arguments: argparse.Namespace) -> str | None:
    """Case files and backend names are checked here first, so that a bad one is one line, not a pytest error."""
    from conformance import backends, profiles
    from conformance.cases import CaseError, load_cases
    from conformance.pytest_plugin import SHIPPED_CASES

    try:
        profiles.short_name(arguments.profile)
    except profiles.UnknownProfile as error:
        return f"--profile: {error}"
    for name in arguments.backend or backends.known_names():
        if name not in backends.known_names():
            return f"--backend: unknown backend {name!r} (known: {', '.join(backends.known_names())})"
        backends.load(name)  # an adapter that declares inadmissible conventions is refused here, in one line
    try:
        load_cases([SHIPPED_CASES if path == "shipped" else Path(path) for path in arguments.cases or ["shipped"]])
    except CaseError as error:
        return str(error)
    return None
