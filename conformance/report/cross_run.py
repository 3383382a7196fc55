"""Comparison after the fact: the agreement of every two columns (backend, variant, device, version, run) that
observed the same case file at the same probe inputs, decided as within one run (`properties.gradient_agreement`:
the same derived bounds, the same executable explanations), from the results files alone.

Each observing record gains one `gradient.agrees_at_probes` record: `pass` when it agrees with every other column,
`divergent` when each gap is explained, `fail` when one is not, `not_applicable` when no other column is
comparable (another case file, other probes), with the reason."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

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


def _compare(
    record: Record,
    mine: GradientObservation | str,
    others: list[tuple[Record, GradientObservation | str]],
) -> Record:
    failures: list[tuple[Comparison, str, dict]] = []
    explained: list[tuple[properties.Verdict, str]] = []
    worst: Comparison | None = None
    not_comparable: list[str] = []
    pairs = 0
    for other, theirs in others:
        reason = _not_comparable(mine, theirs)
        if reason:
            not_comparable.append(f"{column(other)}: {reason}")
            continue
        for index, (my_probe, their_probe) in enumerate(zip(mine.probes, theirs.probes, strict=True)):
            try:
                verdict = properties.gradient_agreement(
                    properties.GradientSide(column(record), my_probe.run, my_probe.reference, mine.conventions),
                    properties.GradientSide(column(other), their_probe.run, their_probe.reference, theirs.conventions),
                )
            except (ValueError, KeyError) as error:  # shapes or names that do not match: files of other cases
                not_comparable.append(f"{column(other)}: probe {index} cannot be compared ({error})")
                break
            pairs += 1
            if worst is None or verdict.comparison.ratio >= worst.ratio:
                worst = verdict.comparison
            if verdict.explanation:
                explained.append((verdict, f"probe {index}"))
            elif not verdict.comparison.ok:
                failures.append((verdict.comparison, f"probe {index} against {column(other)}", my_probe.inputs))
    shown = failures[0][0] if failures else worst
    base = replace(
        record,
        property=PROPERTY,
        explanation=None,
        citation=None,
        examples=pairs,
        discarded={},
        sensitivity=None,
        elapsed_s=None,
        max_error=None if shown is None else shown.max_error,
        tolerance=None if shown is None else shown.tolerance,
        counterexample=None,
        repro=None,
        message=None,
        trajectory=None,
        observations=None,
        source=f"compared from {record.source}",
    )
    if failures:
        comparison, where, inputs = failures[0]
        return replace(
            base,
            outcome="fail",
            counterexample={name: value.tolist() for name, value in inputs.items()},
            message=f"{where}: {comparison.where}: {comparison.detail}",
        )
    if pairs == 0:
        return replace(base, outcome="not_applicable", message="not comparable: " + "; ".join(not_comparable))
    note = ("; not comparable: " + "; ".join(not_comparable)) if not_comparable else ""
    if explained:
        verdict, where = explained[0]
        return replace(
            base,
            outcome="divergent",
            explanation=f"{where}: {verdict.explanation}",
            citation=verdict.citation,
            message=note.removeprefix("; ") or None,
        )
    return replace(base, outcome="pass", message=note.removeprefix("; ") or None)


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
