"""Reads JSON Lines result files into one merged `Results`.

Results come from many places at once (xdist workers, tox envs, CI jobs on other versions or devices), and
a run that crashed leaves a half-written last line: the report must still show everything that was
recorded, and say, as a warning, every line it could not use, never drop one silently.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conformance.results import OUTCOMES, SCHEMA

REQUIRED = ("case", "property", "backend", "outcome")
TRUNCATED = "truncated last line (the run was cut off?); ignored"


@dataclass(frozen=True)
class Record:
    """One result record, normalised: missing optional fields get their documented fallbacks."""

    case: str
    title: str
    tags: tuple[str, ...]
    property: str
    backend: str
    variant: str
    device: str
    dtype: str
    framework_version: str
    outcome: str
    explanation: str | None
    citation: str | None
    examples: int | None
    discarded: dict[str, int]  # examples filtered out, by reason
    sensitivity: float | None  # the smallest relative error in every value that the item would have caught
    elapsed_s: float | None
    max_error: float | None
    tolerance: float | None
    counterexample: Any
    repro: str | None
    message: str | None
    trajectory: dict[str, list[Any]] | None
    observations: dict[str, Any] | None  # read back by observations.read_gradient_observation when compared
    pairs: tuple[dict[str, Any], ...]  # a comparison's verdict against each other column (cross_run.Pair)
    run_id: str | None
    source: str  # "file:line", so that a reader can find the raw record

    @property
    def ratio(self) -> float | None:
        """max_error / tolerance: below 1 is within tolerance; None when either is missing."""
        if self.max_error is None or self.tolerance is None:
            return None
        if self.tolerance == 0:
            return 0.0 if self.max_error == 0 else math.inf
        return abs(self.max_error) / abs(self.tolerance)


@dataclass
class Run:
    """A run header; the headers of one run_id (one per xdist worker) merge into one."""

    run_id: str | None
    header: dict[str, Any]
    sources: list[str] = field(default_factory=list)


@dataclass
class Results:
    """Everything the report shows: runs, records, and the warnings met while reading them."""

    runs: list[Run] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_results(paths: list[Path]) -> Results:
    """Reads and merges result files; raises OSError only for a file that cannot be opened."""
    results = Results()
    runs: dict[str | None, Run] = {}
    seen: set[Path] = set()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            results.warnings.append(f"{path}: given more than once; read once")
            continue
        seen.add(resolved)
        _read_file(Path(path), results, runs)
    results.runs = list(runs.values())
    results.records = [_with_version(record, runs) for record in results.records]
    _warn_records_without_header(results, runs)
    return results


def _read_file(path: Path, results: Results, runs: dict[str | None, Run]) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    truncated_last = bool(text) and not text.endswith("\n")
    problems: dict[str, list[int]] = defaultdict(list)  # one warning per kind of problem, naming its lines
    current_run: str | None = None
    seen_lines: set[tuple[str | None, str]] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            cut_off = truncated_last and number == len(lines)
            problems[TRUNCATED if cut_off else "not JSON; ignored"].append(number)
            continue
        if not isinstance(raw, dict):
            problems["not a JSON object; ignored"].append(number)
            continue
        schema = raw.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            problems[f"no integer schema; read as schema {SCHEMA}"].append(number)
        elif schema > SCHEMA:
            problems[f"schema {schema}, newer than this report reads ({SCHEMA}); new fields not shown"].append(number)
        kind = raw.get("kind")
        if kind == "run":
            current_run = _text(raw.get("run_id"))
            _merge_header(runs, current_run, raw, f"{path}:{number}")
            continue
        if kind != "result":
            problems[f"unknown kind {str(kind)!r}; ignored"].append(number)
            continue
        run_id = _text(raw.get("run_id")) or current_run
        if (run_id, line) in seen_lines:
            problems["repeats an earlier line of the same run verbatim; counted once"].append(number)
            continue
        seen_lines.add((run_id, line))
        record, problem = _record(raw, run_id, f"{path}:{number}")
        if problem:
            problems[problem].append(number)
        if record is not None:
            results.records.append(record)
    for problem, numbers in problems.items():
        results.warnings.append(f"{path}, {_line_list(numbers)}: {problem}")


def _line_list(numbers: list[int], shown: int = 5) -> str:
    """'line 3' or 'lines 3, 7, 9 and 12 more': a warning names where, without listing thousands of lines."""
    if len(numbers) == 1:
        return f"line {numbers[0]}"
    listed = ", ".join(str(number) for number in numbers[:shown])
    more = f" and {len(numbers) - shown} more" if len(numbers) > shown else ""
    return f"lines {listed}{more}"


def _merge_header(runs: dict[str | None, Run], run_id: str | None, raw: dict[str, Any], where: str) -> None:
    """One header per xdist worker shares the run_id: keep the first, add what the others know more."""
    run = runs.setdefault(run_id, Run(run_id, {}))
    run.sources.append(where)
    header = run.header
    header["frameworks"] = {**_mapping(raw.get("frameworks")), **_mapping(header.get("frameworks"))}
    devices = _mapping(header.get("devices"))
    for name, listed in _mapping(raw.get("devices")).items():
        known = _listed(devices.get(name))
        devices[name] = known + [device for device in _listed(listed) if device not in known]
    header["devices"] = devices
    started = [value for value in (header.get("started"), raw.get("started")) if isinstance(value, str)]
    for key, value in raw.items():
        header.setdefault(key, value)
    if started:
        header["started"] = min(started)


def _record(raw: dict[str, Any], run_id: str | None, where: str) -> tuple[Record | None, str | None]:
    """The record, and what was wrong with it, if anything."""
    missing = [name for name in REQUIRED if not _text(raw.get(name))]
    if missing:
        return None, f"result without {', '.join(missing)}; ignored"
    outcome, problem = str(raw["outcome"]), None
    if outcome not in OUTCOMES:
        outcome, problem = "error", f"unknown outcome {outcome!r}; shown as error"
    tags = raw.get("tags")
    record = Record(
        case=str(raw["case"]),
        title=_text(raw.get("title")) or str(raw["case"]),
        tags=tuple(str(tag) for tag in tags) if isinstance(tags, list) else (),
        property=str(raw["property"]),
        backend=str(raw["backend"]),
        variant=_text(raw.get("variant")) or "default",
        device=_text(raw.get("device")) or "unknown",
        dtype=_text(raw.get("dtype")) or "unknown",
        framework_version=_text(raw.get("framework_version")) or "",
        outcome=outcome,
        explanation=_text(raw.get("explanation")),
        citation=_text(raw.get("citation")),
        examples=raw["examples"] if isinstance(raw.get("examples"), int) else None,
        discarded={
            str(reason): count
            for reason, count in _mapping(raw.get("discarded")).items()
            if isinstance(count, int) and not isinstance(count, bool) and count > 0
        },
        sensitivity=_number(raw.get("sensitivity")),
        elapsed_s=_number(raw.get("elapsed_s")),
        max_error=_number(raw.get("max_error")),
        tolerance=_number(raw.get("tolerance")),
        counterexample=raw.get("counterexample"),
        repro=_text(raw.get("repro")),
        message=_text(raw.get("message")),
        trajectory=raw["trajectory"] if isinstance(raw.get("trajectory"), dict) else None,
        observations=raw["observations"] if isinstance(raw.get("observations"), dict) else None,
        pairs=tuple(pair for pair in _listed(raw.get("pairs")) if isinstance(pair, dict)),
        run_id=run_id,
        source=where,
    )
    return record, problem


def _with_version(record: Record, runs: dict[str | None, Run]) -> Record:
    """A record without framework_version takes its run header's, which may come from another file."""
    if record.framework_version:
        return record
    run = runs.get(record.run_id)
    version = _mapping(run.header.get("frameworks")).get(record.backend) if run else None
    return replace(record, framework_version=str(version) if version is not None else "unknown")


def _warn_records_without_header(results: Results, runs: dict[str | None, Run]) -> None:
    orphans = Counter(record.run_id for record in results.records if record.run_id not in runs)
    for run_id, count in sorted(orphans.items(), key=lambda item: str(item[0])):
        name = f"run {run_id}" if run_id is not None else "records without run_id"
        results.warnings.append(f"{name}: {count} record(s) with no run header; versions come from the records")


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _text(value: Any) -> str | None:
    """Strings pass through; numbers become text; null, empty and containers become None."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if text.strip() else None


def _number(value: Any) -> float | None:
    """JSON numbers, and the text a writer with allow_nan=False puts for NaN and infinities ("nan", "inf")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None
