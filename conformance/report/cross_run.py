"""Comparison after the fact: the agreement of every two columns (backend, variant, device, version, run) that
observed the same case file at the same probe inputs, decided as within one run (`properties.gradient_agreement`,
`update_properties.agreement`, `update_properties.accumulation_agreement`: the same derived bounds, the same
executable explanations), from the results files and the case files: the merge derives the reference and its
bounds from the case file again, and holds each observation to its seed's probes, its case's variables and, for a
built-in backend, its adapter's declarations.

Each observing record gains one `gradient.agrees_at_probes` (`update.agrees_at_probes`,
`accumulation.agrees_at_probes`) record: `pass` when it agrees with every other column, `divergent` when each gap
is explained, `fail` when one is not, `not_applicable` when no other column is comparable (another case file,
other probes), with the reason."""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from conformance import backends, properties, update_properties
from conformance.backends.base import decay_rates_in_dtype_of
from conformance.cases import Case
from conformance.observations import (
    AccumulationObservation,
    GradientObservation,
    Unreadable,
    UpdateObservation,
    read_accumulation_observation,
    read_gradient_observation,
    read_update_observation,
)
from conformance.reference import optimizers
from conformance.reference.conventions import SWITCH_NAMES
from conformance.report.loader import Record
from conformance.tolerance import Comparison

COMPARED = {
    "gradient.at_probes": "gradient.agrees_at_probes",
    "update.at_probes": "update.agrees_at_probes",
    "accumulation.at_probes": "accumulation.agrees_at_probes",
}
READERS = {
    "gradient.at_probes": read_gradient_observation,
    "update.at_probes": read_update_observation,
    "accumulation.at_probes": read_accumulation_observation,
}
Observation = GradientObservation | UpdateObservation | AccumulationObservation | str  # str: why it cannot be read
COMPARISON_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError, ArithmeticError)


def column(record: Record) -> str:
    """How a record's column is named in a comparison: what differs between two runs of one backend included."""
    return f"{record.backend} {record.framework_version} {record.variant} {record.device} (run {record.run_id})"


def compare_observations(records: list[Record], cases: list[Case] = (), processes: int = 1) -> list[Record]:
    """One comparison record per observing record that has another column to compare with. Each needs the case
    file its run observed, found among `cases` by id and digest (else it is not comparable). With `processes` > 1
    the cases are compared in that many processes: deriving each case's reference again (SymPy) is most of the
    merge's time, and comparisons never cross cases."""
    observing = [record for record in records if record.property in COMPARED and record.observations is not None]
    by_case: dict[str, list[Record]] = defaultdict(list)
    for record in observing:
        by_case[record.case].append(record)
    if processes <= 1 or len(by_case) < 2:
        return _compare(observing, cases)
    tasks = [(group, [case for case in cases if case.id == case_id]) for case_id, group in by_case.items()]
    largest_first = sorted(range(len(tasks)), key=lambda index: -len(tasks[index][0]))
    compared: list[list[Record]] = [[] for _ in tasks]
    # spawned, not forked: `conformance run --report` merges in a process that has loaded the frameworks' threads
    with ProcessPoolExecutor(min(processes, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {index: pool.submit(_compare, *tasks[index]) for index in largest_first}
        for index, future in futures.items():
            compared[index] = future.result()
    return [record for group in compared for record in group]


def _compare(records: list[Record], cases: list[Case]) -> list[Record]:
    by_file = {(case.id, case.digest): case for case in cases}
    builtin = set(backends.known_names())
    groups: dict[tuple[str, str, str], list[tuple[Record, tuple[Observation, Case | None]]]] = defaultdict(list)
    for record in records:
        digest = record.observations.get("case_digest")
        case = by_file.get((record.case, digest)) if isinstance(digest, str) else None
        try:
            if case is None:
                raise Unreadable(f"no case file here has digest {digest} (conformance report --cases DIR)")
            observed: Observation = READERS[record.property](record.observations, record.dtype, case)
            observed = _as_declared(observed, record) if record.backend in builtin else _unverified(observed)
        except Unreadable as problem:
            observed = str(problem)
        groups[(record.property, record.case, record.dtype)].append((record, (observed, case)))
    compared = []
    for (observed_property, _, _), group in groups.items():
        for record, (observed, case) in group:
            pairs = [
                _pair(record, observed, other, theirs, case)
                for other, (theirs, _) in group
                if column(other) != column(record)
            ]
            if pairs:
                compared.append(_summarise(record, COMPARED[observed_property], pairs))
    return compared


@dataclass(frozen=True)
class Pair:
    """One column against another, over every probe: the worst comparison, and the first explanation or failure."""

    other: Record
    outcome: str  # pass, divergent, fail, or not_comparable
    comparison: Comparison | None = None
    why: str | None = None  # the explanation, the failure's place, or why the two cannot be compared
    citation: str | None = None
    inputs: dict | None = None  # the probe of the failure

    def to_json(self) -> dict:
        ratio = None if self.comparison is None else self.comparison.ratio
        other = self.other
        return {
            "with": column(other),
            "backend": other.backend,
            "version": other.framework_version,
            "variant": other.variant,
            "device": other.device,
            "outcome": self.outcome,
            "ratio": ratio,
            "why": self.why,
        }


def _as_declared(observed: GradientObservation | UpdateObservation | AccumulationObservation, record: Record):
    """For a backend whose adapter is here, what it declares rules, not what the file says: a file may not claim
    other conventions, nor another accumulation mechanism (its reduction, a step read back, a narrower accumulator
    widen its bound), and the decay rates' precision (which widens Adam's step bound) is the adapter's for the
    record's device and variant. A backend whose adapter is not here keeps the file's conventions, checked
    admissible."""
    adapter = backends.load(record.backend)
    declared = {name: getattr(adapter.conventions, name) for name in SWITCH_NAMES}
    if {name: getattr(observed.conventions, name) for name in SWITCH_NAMES} != declared:
        raise Unreadable(f"conventions other than those the {record.backend} adapter here declares")
    observed = replace(observed, conventions=adapter.conventions)
    if isinstance(observed, UpdateObservation):
        observed = replace(
            observed,
            decay_rates_in_dtype=decay_rates_in_dtype_of(adapter, record.device, record.variant),
            optimizers=adapter.optimizers,
        )
    if isinstance(observed, AccumulationObservation):
        declared = adapter.accumulation_mechanism
        if declared is None:
            raise Unreadable(f"the {record.backend} adapter here declares no accumulation mechanism")
        for probe in observed.probes:
            run = probe.run
            if (
                run.promise != declared.promise
                or bool(run.resolution) != declared.step_read_back
                or run.accumulator_dtype not in (None, declared.accumulator_dtype)
            ):
                raise Unreadable(f"an accumulation mechanism other than the one the {record.backend} adapter declares")
    return observed


def _unverified(observed: GradientObservation | UpdateObservation | AccumulationObservation):
    """For a backend whose adapter is not here, nothing that would widen a bound on the file's word alone: a
    narrower accumulator it claims is not taken (its result is judged in the run's dtype)."""
    if not isinstance(observed, AccumulationObservation):
        return observed
    probes = tuple(replace(probe, run=replace(probe.run, accumulator_dtype=None)) for probe in observed.probes)
    return replace(observed, probes=probes)


def _pair(record: Record, mine: Observation, other: Record, theirs: Observation, case: Case) -> Pair:
    reason = _not_comparable(mine, theirs)
    if reason:
        return Pair(other, "not_comparable", why=reason)
    if isinstance(mine, UpdateObservation):
        return _update_pair(record, mine, other, theirs, case)
    if isinstance(mine, AccumulationObservation):
        return _accumulation_pair(record, mine, other, theirs)
    return _gradient_pair(record, mine, other, theirs)


def _over_probes(other: Record, mine, theirs, judge: Callable) -> Pair:
    """The pair's outcome over every probe: the first failure, else the worst comparison with every distinct
    explanation (each probe may need another: the probe at zero differs only in what the frameworks document).
    `judge(my_probe, their_probe)` gives an `update_properties.Verdict`, or None to leave the probe out (it
    comes near underflow)."""
    worst: Comparison | None = None
    explanations: dict[str, tuple[int, str | None]] = {}  # explanation -> the first probe it explains, citation
    for index, (my_probe, their_probe) in enumerate(zip(mine.probes, theirs.probes, strict=True)):
        try:
            verdict = judge(my_probe, their_probe)
        except COMPARISON_ERRORS as error:  # a value no comparison expects, e.g. from a hand-edited file
            return Pair(other, "not_comparable", why=f"probe {index} cannot be compared ({error})")
        if verdict is None:
            continue
        if verdict.outcome == "fail":
            where = f"probe {index}: {verdict.comparison.where}: {verdict.comparison.detail}"
            return Pair(other, "fail", verdict.comparison, where, inputs=my_probe.inputs)
        if worst is None or verdict.comparison.ratio >= worst.ratio:
            worst = verdict.comparison
        if verdict.outcome == "divergent":
            explanations.setdefault(verdict.explanation, (index, verdict.citation))
    if worst is None:
        return Pair(other, "not_comparable", why="every probe comes near underflow")
    if explanations:
        why = "; ".join(f"probe {index}: {text}" for text, (index, _) in explanations.items())
        cited = {url for _, citation in explanations.values() if citation for url in citation.split("; ")}
        return Pair(other, "divergent", worst, why, "; ".join(sorted(cited)))
    return Pair(other, "pass", worst)


def _gradient_pair(record: Record, mine: GradientObservation, other: Record, theirs: GradientObservation) -> Pair:
    def judge(my_probe, their_probe) -> update_properties.Verdict:
        verdict = properties.gradient_agreement(
            properties.GradientSide(column(record), my_probe.run, my_probe.reference, mine.conventions),
            properties.GradientSide(column(other), their_probe.run, their_probe.reference, theirs.conventions),
        )
        outcome = "divergent" if verdict.explanation else "pass" if verdict.comparison.ok else "fail"
        return update_properties.Verdict(outcome, verdict.comparison, verdict.explanation, verdict.citation)

    return _over_probes(other, mine, theirs, judge)


def _update_pair(record: Record, mine: UpdateObservation, other: Record, theirs: UpdateObservation, case: Case) -> Pair:
    """The trajectories at each probe, as update.agrees_across_backends judges a drawn example; a probe whose
    reference path comes near underflow for either backend is left out, as a drawn one is discarded."""
    rule, dtype, names = case.update.rule, record.dtype, (record.backend, other.backend)
    for name, observed in zip(names, (mine, theirs), strict=True):
        if observed.optimizers is None:
            return Pair(other, "not_comparable", why=f"no adapter here declares the {name} backend's optimizers")

    def judge(my_probe, their_probe) -> update_properties.Verdict | None:
        start = {spec.name: my_probe.inputs[spec.name] for spec in case.variables}
        reference_for = update_properties.summed_reference(case, my_probe.inputs, dtype)
        sides = [
            update_properties.Side(
                name,
                optimizers.hyperparameters(rule, name, observed.optimizers, probe.hyper, case.update.schedule),
                observed.optimizers,
                observed.conventions,
                probe.run,
                observed.decay_rates_in_dtype,
            )
            for name, probe, observed in zip(names, (my_probe, their_probe), (mine, theirs), strict=True)
        ]
        if any(
            update_properties.path_near_underflow(
                rule,
                side.hyper,
                side.switches,
                start,
                reference_for(side.switches, side.conventions),
                case.update.steps,
                dtype,
            )
            for side in sides
        ):
            return None
        return update_properties.agreement(rule, my_probe.hyper, *sides, start, reference_for, dtype)

    return _over_probes(other, mine, theirs, judge)


def _accumulation_pair(
    record: Record, mine: AccumulationObservation, other: Record, theirs: AccumulationObservation
) -> Pair:
    """The two mechanisms at each probe, as `update_properties.accumulation_agreement` judges them."""

    def judge(my_probe, their_probe) -> update_properties.Verdict:
        sides = [
            update_properties.AccumulationSide(column(named), probe.run, probe.references, observed.conventions)
            for named, probe, observed in ((record, my_probe, mine), (other, their_probe, theirs))
        ]
        return update_properties.accumulation_agreement(*sides, record.dtype)

    return _over_probes(other, mine, theirs, judge)


def _summarise(record: Record, compared_property: str, pairs: list[Pair]) -> Record:
    compared = [pair for pair in pairs if pair.outcome != "not_comparable"]
    failed = [pair for pair in compared if pair.outcome == "fail"]
    explained = [pair for pair in compared if pair.outcome == "divergent"]
    shown = (failed or explained or sorted(compared, key=lambda pair: -pair.comparison.ratio) or [None])[0]
    comparison = None if shown is None else shown.comparison
    base = replace(
        record,
        property=compared_property,
        outcome="pass",
        explanation=None,
        citation=None,
        examples=len(compared),
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
    not_comparable = "; ".join(
        f"{column(pair.other)}: {pair.why}" for pair in pairs if pair.outcome == "not_comparable"
    )
    if failed:
        inputs = {name: value.tolist() for name, value in failed[0].inputs.items()}
        return replace(
            base, outcome="fail", counterexample=inputs, message=f"against {column(shown.other)}: {shown.why}"
        )
    if not compared:
        return replace(base, outcome="not_applicable", message=f"not comparable: {not_comparable}")
    message = f"not comparable: {not_comparable}" if not_comparable else None
    if explained:
        return replace(base, outcome="divergent", explanation=shown.why, citation=shown.citation, message=message)
    return replace(base, message=message)


def _not_comparable(mine: Observation, theirs: Observation) -> str | None:
    if isinstance(mine, str):
        return f"this record's {mine}"
    if isinstance(theirs, str):
        return theirs
    if mine.case_digest != theirs.case_digest:
        return f"the case files differ (digest {mine.case_digest} vs {theirs.case_digest})"
    if mine.probe_seed != theirs.probe_seed:  # each was checked to hold the probes its seed draws
        return f"other probe inputs (probe seed {mine.probe_seed} vs {theirs.probe_seed})"
    return None
