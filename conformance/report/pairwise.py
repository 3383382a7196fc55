"""The pairwise views, from the comparisons at probes (report.cross_run): for one case, every column against every
other, so that a reader sees which pairs agree, which differ and why, rather than one backend against all the
others; and for one backend, its versions (or devices) side by side, with the first where a difference appears."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from conformance.report.cross_run import COMPARED, column
from conformance.report.loader import Record
from conformance.report.matrix import Row, natural


@dataclass(frozen=True)
class PairCell:
    outcome: str  # pass, divergent, fail, not_comparable
    ratio: float | None
    why: str | None


@dataclass(frozen=True)
class PairTable:
    property: str
    dtype: str
    columns: tuple[str, ...]
    cells: tuple[tuple[PairCell | None, ...], ...]  # [i][j]: columns[i] against columns[j]; None on the diagonal


def pair_tables(row: Row) -> list[PairTable]:
    observed: dict[tuple[str, str], dict[str, dict[str, PairCell]]] = defaultdict(dict)
    for record in (record for cell in row.cells if cell for record in cell.records):
        if record.property in COMPARED.values():
            observed[(record.property, record.dtype)][column(record)] = {
                str(pair.get("with")): PairCell(
                    str(pair.get("outcome")), _number(pair.get("ratio")), _text(pair.get("why"))
                )
                for pair in record.pairs
            }
    tables = []
    for (compared, dtype), pairs in sorted(observed.items()):
        columns = tuple(sorted(pairs))
        cells = tuple(tuple(pairs[mine].get(theirs) for theirs in columns) for mine in columns)
        tables.append(PairTable(compared, dtype, _shown(columns), cells))
    return tables


def _shown(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The columns' names without their run, where that leaves them apart (one run holds every backend)."""
    short = tuple(name.rsplit(" (run ", 1)[0] for name in columns)
    return short if len(set(short)) == len(short) else columns


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Change:
    """The first step along an axis (version, device) where a comparison at probes stops passing."""

    case: str
    property: str
    dtype: str
    where: str  # the column's other coordinates (variant, and device or version)
    before: str
    after: str
    outcome: str
    why: str | None


@dataclass(frozen=True)
class AxisView:
    """One backend along one axis: its values in order, how many comparisons between them, and the changes."""

    backend: str
    axis: str  # "version" or "device"
    values: tuple[str, ...]
    comparisons: int
    changes: tuple[Change, ...]


SEVERITY = {"pass": 0, "divergent": 1, "fail": 2}
AXES = {"version": ("framework_version", "device"), "device": ("device", "framework_version")}


def axis_views(records: list[Record]) -> list[AxisView]:
    """For each backend seen at two or more versions (or devices) with the rest of its column alike, the first
    version (or device) where a comparison at probes differs, per case, property, dtype and column."""
    views = []
    for axis, (field, held) in AXES.items():
        outcomes: dict[tuple, dict[tuple[str, str], PairCell]] = defaultdict(dict)
        values: dict[str, set[str]] = defaultdict(set)
        for record in records:
            if record.property not in COMPARED.values():
                continue
            mine = getattr(record, field)
            for pair in record.pairs:
                theirs = str(pair.get(field.removeprefix("framework_")))
                same = pair.get("backend") == record.backend and pair.get("variant") == record.variant
                if (
                    not same
                    or theirs == mine
                    or str(pair.get(held.removeprefix("framework_"))) != getattr(record, held)
                ):
                    continue
                values[record.backend] |= {mine, theirs}
                if pair.get("outcome") not in SEVERITY:  # not comparable: says nothing about a change
                    continue
                key = (
                    record.backend,
                    record.case,
                    record.property,
                    record.dtype,
                    record.variant,
                    getattr(record, held),
                )
                cell = PairCell(str(pair.get("outcome")), _number(pair.get("ratio")), _text(pair.get("why")))
                known = outcomes[key].get((mine, theirs))  # several runs of one version: the worst of them counts
                if known is None or SEVERITY[cell.outcome] > SEVERITY[known.outcome]:
                    outcomes[key][(mine, theirs)] = cell
        for backend in sorted(values):
            ordered = tuple(sorted(values[backend], key=natural))
            keys = [key for key in outcomes if key[0] == backend]
            changes = []
            for key in sorted(keys):
                for before, after in zip(ordered, ordered[1:], strict=False):
                    cell = outcomes[key].get((before, after))
                    if cell is not None and cell.outcome != "pass":
                        _, case, compared, dtype, variant, other = key
                        where = f"{variant} · {other}"
                        changes.append(Change(case, compared, dtype, where, before, after, cell.outcome, cell.why))
                        break
            views.append(AxisView(backend, axis, ordered, sum(len(outcomes[key]) for key in keys), tuple(changes)))
    return views
