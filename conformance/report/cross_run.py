"""Comparison after the fact: the agreement of every two columns (backend, variant, device, version, run) that
observed the same case file at the same probe inputs, decided as within one run (`properties.gradient_agreement`:
the same derived bounds, the same executable explanations), from the results files alone.

Each observing record gains one `gradient.agrees_at_probes` record: `pass` when it agrees with every other column,
`divergent` when each gap is explained, `fail` when one is not, `not_applicable` when no other column is
comparable (another case file, other probes), with the reason."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from conformance import properties
from conformance.observations import GradientObservation, Unreadable, read_gradient_observation
from conformance.report.loader import Record
from conformance.tolerance import Comparison

OBSERVED = "gradient.at_probes"
PROPERTY = "gradient.agrees_at_probes"


def column(record: Record) -> str:
    """How a record's column is named in a comparison: what differs between two runs of one backend included."""
    return f"{record.backend} {record.framework_version} {record.variant} {record.device} (run {record.run_id})"


def compare_observations(records: list[Record]) -> list[Record]:
    """One PROPERTY record per observing record that has another column to compare with."""
    groups: dict[tuple[str, str], list[tuple[Record, GradientObservation | str]]] = defaultdict(list)
    for record in records:
        if record.property != OBSERVED or record.observations is None:
            continue
        try:
            observed: GradientObservation | str = read_gradient_observation(record.observations, record.dtype)
        except Unreadable as problem:
            observed = str(problem)
        groups[(record.case, record.dtype)].append((record, observed))
    compared = []
    for group in groups.values():
        for record, observed in group:
            others = [(other, theirs) for other, theirs in group if column(other) != column(record)]
            if others:
                compared.append(_compare(record, observed, others))
    return compared


@dataclass(frozen=True)
class Pair:
    """One column against another, over every probe: the worst comparison, and the first explanation or failure."""

    other: str
    outcome: str  # pass, divergent, fail, or not_comparable
    comparison: Comparison | None = None
    why: str | None = None  # the explanation, the failure's place, or why the two cannot be compared
    citation: str | None = None
    inputs: dict | None = None  # the probe of the failure

    def to_json(self) -> dict:
        ratio = None if self.comparison is None else self.comparison.ratio
        return {"with": self.other, "outcome": self.outcome, "ratio": ratio, "why": self.why}


def compare_pair(
    record: Record, mine: GradientObservation | str, other: Record, theirs: GradientObservation | str
) -> Pair:
    reason = _not_comparable(mine, theirs)
    if reason:
        return Pair(column(other), "not_comparable", why=reason)
    worst: Comparison | None = None
    explained: Pair | None = None
    for index, (my_probe, their_probe) in enumerate(zip(mine.probes, theirs.probes, strict=True)):
        try:
            verdict = properties.gradient_agreement(
                properties.GradientSide(column(record), my_probe.run, my_probe.reference, mine.conventions),
                properties.GradientSide(column(other), their_probe.run, their_probe.reference, theirs.conventions),
            )
        except (ValueError, KeyError) as error:  # shapes or names that do not match: not the same case after all
            return Pair(column(other), "not_comparable", why=f"probe {index} cannot be compared ({error})")
        if not verdict.comparison.ok and not verdict.explanation:
            where = f"probe {index}: {verdict.comparison.where}: {verdict.comparison.detail}"
            return Pair(column(other), "fail", verdict.comparison, where, inputs=my_probe.inputs)
        if worst is None or verdict.comparison.ratio >= worst.ratio:
            worst = verdict.comparison
        if verdict.explanation and explained is None:
            explained = Pair(
                column(other), "divergent", None, f"probe {index}: {verdict.explanation}", verdict.citation
            )
    if explained is not None:
        return replace(explained, comparison=worst)
    return Pair(column(other), "pass", worst)


def _compare(
    record: Record,
    mine: GradientObservation | str,
    others: list[tuple[Record, GradientObservation | str]],
) -> Record:
    pairs = [compare_pair(record, mine, other, theirs) for other, theirs in others]
    compared = [pair for pair in pairs if pair.outcome != "not_comparable"]
    failed = [pair for pair in compared if pair.outcome == "fail"]
    explained = [pair for pair in compared if pair.outcome == "divergent"]
    shown = (failed or explained or sorted(compared, key=lambda pair: -pair.comparison.ratio) or [None])[0]
    comparison = None if shown is None else shown.comparison
    base = replace(
        record,
        property=PROPERTY,
        outcome="pass",
        explanation=None,
        citation=None,
        examples=sum(len(mine.probes) for _ in compared) if compared else 0,
        discarded={},
        sensitivity=None,
        elapsed_s=None,
        max_error=None if comparison is None else comparison.max_error,
        tolerance=None if comparison is None else comparison.tolerance,
        counterexample=None,
        repro=None,
        message=None,
        trajectory=None,
        observations=None,
        pairs=tuple(pair.to_json() for pair in pairs),
        source=f"compared from {record.source}",
    )
    not_comparable = "; ".join(f"{pair.other}: {pair.why}" for pair in pairs if pair.outcome == "not_comparable")
    if failed:
        inputs = {name: value.tolist() for name, value in failed[0].inputs.items()}
        return replace(base, outcome="fail", counterexample=inputs, message=f"against {shown.other}: {shown.why}")
    if not compared:
        return replace(base, outcome="not_applicable", message=f"not comparable: {not_comparable}")
    message = f"not comparable: {not_comparable}" if not_comparable else None
    if explained:
        return replace(base, outcome="divergent", explanation=shown.why, citation=shown.citation, message=message)
    return replace(base, message=message)


def _not_comparable(mine: GradientObservation | str, theirs: GradientObservation | str) -> str | None:
    if isinstance(mine, str):
        return f"this record's {mine}"
    if isinstance(theirs, str):
        return theirs
    if mine.case_digest != theirs.case_digest:
        return f"the case files differ (digest {mine.case_digest} vs {theirs.case_digest})"
    if mine.probe_digest != theirs.probe_digest or len(mine.probes) != len(theirs.probes):
        return f"other probe inputs (probe seed {mine.probe_seed} vs {theirs.probe_seed})"
    return None
