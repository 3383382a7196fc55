"""The compatibility matrix: cases as rows (grouped by first tag), backend configurations as columns.

Like the ECMAScript compat-table, a reader scans one row for a case or one column for an engine; each cell
holds the worst outcome of its records and the largest error/tolerance ratio, and links to its details.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from conformance.report.loader import Record
from conformance.report.outcomes import worst

UNTAGGED = "untagged"


@dataclass(frozen=True)
class Column:
    """One backend configuration; results from several runs of the same one share a column."""

    backend: str
    framework_version: str
    variant: str
    device: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.framework_version} · {self.variant} · {self.device} · {self.dtype}"


@dataclass(frozen=True)
class Cell:
    anchor: str
    column: Column
    records: tuple[Record, ...]  # sorted by property
    outcome: str
    ratio: float | None  # largest error/tolerance; NaN when any error was NaN


@dataclass(frozen=True)
class Row:
    anchor: str
    case: str
    title: str
    tags: tuple[str, ...]
    cells: tuple[Cell | None, ...]  # aligned with Matrix.columns


@dataclass(frozen=True)
class Group:
    name: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Span:
    """A header cell spanning consecutive columns that share a label."""

    label: str
    width: int


@dataclass(frozen=True)
class Matrix:
    columns: tuple[Column, ...]
    groups: tuple[Group, ...]

    @property
    def rows(self) -> tuple[Row, ...]:
        return tuple(row for group in self.groups for row in group.rows)

    @property
    def group_starts(self) -> frozenset[int]:
        """Columns that open a new backend or version, drawn with a stronger left border."""
        key = _HEADER_LEVELS[0][0]
        return frozenset(i for i, c in enumerate(self.columns) if i == 0 or key(c) != key(self.columns[i - 1]))

    def spans(self, level: int) -> list[Span]:
        """Header row `level`: 0 backend and version, 1 variant and device, 2 dtype."""
        key, label = _HEADER_LEVELS[level]
        spans: list[Span] = []
        previous = None
        for column in self.columns:
            if spans and key(column) == previous:
                spans[-1] = Span(spans[-1].label, spans[-1].width + 1)
            else:
                spans.append(Span(label(column), 1))
            previous = key(column)
        return spans


_HEADER_LEVELS: tuple[tuple[Callable[[Column], object], Callable[[Column], str]], ...] = (
    (lambda c: (c.backend, c.framework_version), lambda c: f"{c.backend} {c.framework_version}"),
    (lambda c: (c.backend, c.framework_version, c.variant, c.device), lambda c: f"{c.variant} · {c.device}"),
    (lambda c: c, lambda c: c.dtype),
)


def build_matrix(records: Iterable[Record]) -> Matrix:
    """Groups records into cells; anchors are positional, so no record text ever reaches an id."""
    by_case: dict[str, list[Record]] = {}
    for record in records:
        by_case.setdefault(record.case, []).append(record)
    columns = tuple(sorted({column_of(r) for case in by_case.values() for r in case}, key=_column_order))
    index = {column: position for position, column in enumerate(columns)}
    grouped: dict[str, list[str]] = {}
    for case, case_records in by_case.items():
        tags = case_records[0].tags
        grouped.setdefault(tags[0] if tags else UNTAGGED, []).append(case)
    names = sorted(grouped, key=lambda name: (name == UNTAGGED, name))
    groups = []
    row_number = 0
    for name in names:
        rows = []
        for case in sorted(grouped[name]):
            rows.append(_row(row_number, case, by_case[case], columns, index))
            row_number += 1
        groups.append(Group(name, tuple(rows)))
    return Matrix(columns, tuple(groups))


def column_of(record: Record) -> Column:
    return Column(record.backend, record.framework_version, record.variant, record.device, record.dtype)


def _column_order(column: Column) -> tuple[tuple[str | int, ...], ...]:
    """Natural order, so that torch 2.9 comes before torch 2.13."""
    fields = (column.backend, column.framework_version, column.variant, column.device, column.dtype)
    return tuple(tuple(natural(field)) for field in fields)


def natural(text: str) -> list[str | int]:
    """'2.13.0' -> ['', 2, '.', 13, '.', 0, '']: the split keeps digits at odd places, so like compares with like."""
    return [int(part) if place % 2 else part for place, part in enumerate(re.split(r"(\d+)", text))]


def largest_ratio(records: Iterable[Record]) -> float | None:
    """The largest error/tolerance; a NaN error is the worst possible, so it wins."""
    ratios = [record.ratio for record in records if record.ratio is not None]
    if any(math.isnan(ratio) for ratio in ratios):
        return math.nan
    return max(ratios, default=None)


def _row(number: int, case: str, records: list[Record], columns: tuple[Column, ...], index: dict[Column, int]) -> Row:
    by_column: dict[int, list[Record]] = {}
    for record in records:
        by_column.setdefault(index[column_of(record)], []).append(record)
    cells: list[Cell | None] = [None] * len(columns)
    for position, cell_records in by_column.items():
        cell_records.sort(key=lambda r: r.property)
        cells[position] = Cell(
            anchor=f"c{number}-{position}",
            column=columns[position],
            records=tuple(cell_records),
            outcome=worst(r.outcome for r in cell_records),
            ratio=largest_ratio(cell_records),
        )
    first = records[0]
    return Row(f"case-{number}", case, first.title, first.tags, tuple(cells))
