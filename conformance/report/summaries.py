"""The page's summaries: where the results come from, how many of each outcome, the per-backend
scoreboard, the known (explained) differences and the reasons things were not run.

Each is a plain value built from records, so that the template only lays them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conformance.report.loader import Record, Run
from conformance.report.matrix import Cell, Matrix, largest_ratio, natural
from conformance.report.outcomes import ORDER

HEADER_FIELDS = ("started", "python", "platform", "hostname", "profile", "seed", "git_commit")


@dataclass(frozen=True)
class RunView:
    run_id: str
    fields: tuple[tuple[str, str], ...]  # (name, value) of HEADER_FIELDS, as text
    frameworks: tuple[tuple[str, str], ...]
    devices: tuple[tuple[str, str], ...]
    records: int
    headers: int  # how many headers (one per worker or file) merged into this run


@dataclass(frozen=True)
class Score:
    """One backend at one version, like a row of the ONNX backend scoreboard."""

    backend: str
    framework_version: str
    counts: dict[str, int]

    @property
    def applicable(self) -> int:
        return sum(self.counts[outcome] for outcome in ("pass", "divergent", "fail", "error"))

    @property
    def agreeing(self) -> int:
        """Passed, or differ only in an explained way."""
        return self.counts["pass"] + self.counts["divergent"]

    @property
    def percent(self) -> float:
        return 100.0 * self.agreeing / self.applicable if self.applicable else 0.0


@dataclass(frozen=True)
class Place:
    """Where a grouped item occurs: one case, the backend configurations, and a link to its details."""

    case: str
    anchor: str
    configurations: tuple[str, ...]


@dataclass(frozen=True)
class KnownDifference:
    explanation: str
    citations: tuple[str, ...]
    places: tuple[Place, ...]
    backends: tuple[str, ...]
    records: int
    largest_error: float | None
    largest_ratio: float | None


@dataclass(frozen=True)
class NotRun:
    outcome: str
    reason: str
    places: tuple[Place, ...]
    records: int


def run_views(runs: list[Run], records: list[Record]) -> list[RunView]:
    counts = Counter(record.run_id for record in records)
    views = []
    for run in runs:
        header = run.header
        views.append(
            RunView(
                run_id=str(run.run_id) if run.run_id is not None else "(no run id)",
                fields=tuple((name, _as_text(header.get(name))) for name in HEADER_FIELDS),
                frameworks=tuple(sorted((str(k), _as_text(v)) for k, v in _mapping(header.get("frameworks")))),
                devices=tuple(sorted((str(k), _as_text(v)) for k, v in _mapping(header.get("devices")))),
                records=counts[run.run_id],
                headers=len(run.sources),
            )
        )
    return views


def outcome_counts(records: Iterable[Record]) -> list[tuple[str, int]]:
    counts = Counter(record.outcome for record in records)
    return [(outcome, counts[outcome]) for outcome in ORDER]


def scoreboard(records: Iterable[Record]) -> list[Score]:
    counts: dict[tuple[str, str], Counter[str]] = {}
    for record in records:
        counts.setdefault((record.backend, record.framework_version), Counter())[record.outcome] += 1
    return [
        Score(backend, version, {outcome: tally[outcome] for outcome in ORDER})
        for (backend, version), tally in sorted(counts.items(), key=lambda item: (item[0][0], natural(item[0][1])))
    ]


def known_differences(matrix: Matrix) -> list[KnownDifference]:
    """Divergent records grouped by explanation, so each documented difference is read once."""
    groups: dict[str, list[tuple[str, Record]]] = {}
    for cell in _cells(matrix):
        for record in cell.records:
            if record.outcome == "divergent":
                key = " ".join((record.explanation or "(no explanation given)").split())
                groups.setdefault(key, []).append((cell.anchor, record))
    differences = []
    for explanation, found in groups.items():
        records = [record for _, record in found]
        errors = [r.max_error for r in records if r.max_error is not None]
        differences.append(
            KnownDifference(
                explanation=explanation,
                citations=_unique(r.citation for r in records if r.citation),
                places=_places(found),
                backends=_unique(r.backend for r in records),
                records=len(records),
                largest_error=max(errors, key=_nan_first, default=None),
                largest_ratio=largest_ratio(records),
            )
        )
    return sorted(differences, key=lambda d: (-d.records, d.explanation))


def not_run(matrix: Matrix) -> list[NotRun]:
    """Skipped and not-applicable records grouped by their reason."""
    groups: dict[tuple[str, str], list[tuple[str, Record]]] = {}
    for cell in _cells(matrix):
        for record in cell.records:
            if record.outcome in ("skip", "not_applicable"):
                reason = " ".join((record.message or "(no reason given)").split())
                groups.setdefault((record.outcome, reason), []).append((cell.anchor, record))
    items = [NotRun(outcome, reason, _places(found), len(found)) for (outcome, reason), found in groups.items()]
    return sorted(items, key=lambda item: (item.outcome, -item.records, item.reason))


def _places(found: list[tuple[str, Record]]) -> tuple[Place, ...]:
    """One place per case, linking to the first cell where it occurs."""
    by_case: dict[str, tuple[str, list[str]]] = {}
    for cell_anchor, record in found:
        _, configurations = by_case.setdefault(record.case, (cell_anchor, []))
        configuration = f"{record.backend} {record.variant} {record.device} {record.dtype}"
        if configuration not in configurations:
            configurations.append(configuration)
    return tuple(Place(case, anchor, tuple(configs)) for case, (anchor, configs) in by_case.items())


def _cells(matrix: Matrix) -> list[Cell]:
    return [cell for row in matrix.rows for cell in row.cells if cell is not None]


def _nan_first(value: float) -> float:
    """Orders NaN above everything, so that a NaN difference is never hidden behind a finite one."""
    return float("inf") if value != value else abs(value)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _mapping(value: Any) -> list[tuple[Any, Any]]:
    return list(value.items()) if isinstance(value, dict) else []


def _as_text(value: Any) -> str:
    """Header values are whatever JSON a runner wrote: show lists joined and nothing as a dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, list):
        return ", ".join(_as_text(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key} {_as_text(item)}" for key, item in value.items())
    return str(value)
