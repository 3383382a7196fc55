"""The pairwise view of one case: for each dtype, every column compared at probes against every other, from the
`gradient.agrees_at_probes` records' pairs (report.cross_run), so that a reader sees which pairs agree, which
differ and why, rather than one backend against all the others."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from conformance.report.cross_run import COMPARED, column
from conformance.report.matrix import Row


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
