"""Observations: what a backend computed at probe inputs that every run draws alike for the same case file, dtype
and seed, recorded with the result so that runs made apart (another backend, version, device or machine) can be
compared after the fact, with no framework installed. An observation holds only what the backend computed and
what describes it (conventions, whether it holds decay rates in the dtype): the merge derives the reference and
its bounds again from the case file, and checks the probes against the seed (report/cross_run.py).

The probes: the point of the declared ranges nearest zero (where kinks and ties sit), then random points drawn
from a generator seeded by the case id, the case file's digest, the dtype and the probe seed (the run's
`--hypothesis-seed`, else 0); an update case's probes carry hyperparameters drawn from their ranges too (the
lower end first). An accumulation observation holds each micro-batch's gradient and what the native mechanism made
of them, with what the mechanism documents (its reduction, whether the result is a step read back, the accumulator
dtype its state showed)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.backends.base import (
    REDUCTIONS,
    AccumulationRun,
    GradientRun,
    UpdateRun,
    micro_batches,
    step_resolution,
)
from conformance.cases import Case
from conformance.reference.conventions import SWITCH_NAMES, KinkConventions
from conformance.reference.gradients import ReferenceGradient, exact_gradient
from conformance.reference.optimizers import OptimizerDeclaration
from conformance.strategies import representable_range

PROBES = 3
KIND_GRADIENTS = "gradients"
KIND_UPDATES = "updates"
KIND_ACCUMULATION = "accumulation"


def probe_seed(hypothesis_seed: object) -> int:
    """The run's Hypothesis seed when it is an integer, else 0: a run without a seed still probes like others."""
    try:
        return int(str(hypothesis_seed))
    except ValueError:
        return 0


def probe_inputs(case: Case, dtype: str, seed: int) -> list[dict[str, np.ndarray]]:
    """The case's probe inputs in `dtype`: the same in every run with this case file and seed."""
    key = hashlib.sha256(f"{case.id}\n{case.digest}\n{dtype}\n{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    probes = []
    for index in range(PROBES):
        probe = {}
        for spec in case.tensors:
            if spec.value is not None:
                probe[spec.name] = spec.value.astype(dtype)
                continue
            low, high = representable_range(*spec.range, dtype)
            if index == 0:
                probe[spec.name] = np.full(spec.shape, min(max(0.0, low), high), dtype=dtype)
            else:  # rounding to the dtype stays within [low, high]: both ends are values of the dtype
                probe[spec.name] = rng.uniform(low, high, spec.shape).astype(dtype)
        probes.append(probe)
    return probes


def probe_hyperparameters(case: Case, dtype: str, seed: int) -> list[dict[str, float | bool]]:
    """An update case's hyperparameters for each probe: the lower end of each range, then seeded draws."""
    key = hashlib.sha256(f"{case.id}\n{case.digest}\n{dtype}\n{seed}\nhyperparameters".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    probes = []
    for index in range(PROBES):
        hyper: dict[str, float | bool] = {}
        for name, spec in case.update.hyperparameters.items():
            if spec.range is None:
                hyper[name] = spec.value
            elif index == 0:
                hyper[name] = float(spec.range[0])
            elif spec.log:
                low, high = spec.range
                hyper[name] = min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high)
            else:
                hyper[name] = float(rng.uniform(*spec.range))
        probes.append(hyper)
    return probes


def _described(kind: str, case: Case, seed: int, conventions: KinkConventions) -> dict[str, Any]:
    """What every observation starts with: its kind, the case file and seed of its probes, the conventions."""
    return {
        "kind": kind,
        "case_digest": case.digest,
        "probe_seed": seed,
        "conventions": {name: getattr(conventions, name) for name in SWITCH_NAMES},
        "citations": {name: citation.url for name, citation in conventions.citations.items()},
    }


def gradient_observation(
    case: Case,
    seed: int,
    probes: list[dict[str, np.ndarray]],
    runs: list[GradientRun],
    conventions: KinkConventions,
) -> dict[str, Any]:
    """The JSON-ready observation of one item: its probes and gradients."""
    return {
        **_described(KIND_GRADIENTS, case, seed, conventions),
        "probes": [{"inputs": probe, "gradients": run.gradients} for probe, run in zip(probes, runs, strict=True)],
    }


def update_observation(
    case: Case,
    seed: int,
    probes: list[dict[str, np.ndarray]],
    hyperparameters: list[dict],
    runs: list[UpdateRun],
    conventions: KinkConventions,
    decay_rates_in_dtype: bool,
) -> dict[str, Any]:
    """The JSON-ready observation of an update item: each probe's trajectory, fed gradients and final state."""
    return {
        **_described(KIND_UPDATES, case, seed, conventions),
        "decay_rates_in_dtype": decay_rates_in_dtype,
        "probes": [
            {"inputs": probe, "hyper": hyper, "values": run.values, "gradients": run.gradients, "state": run.state}
            for probe, hyper, run in zip(probes, hyperparameters, runs, strict=True)
        ],
    }


def accumulation_observation(
    case: Case,
    seed: int,
    probes: list[dict[str, np.ndarray]],
    runs: list[AccumulationRun],
    conventions: KinkConventions,
) -> dict[str, Any]:
    """The JSON-ready observation of an accumulation item: each probe's micro-batch gradients and accumulated result."""
    return {
        **_described(KIND_ACCUMULATION, case, seed, conventions),
        "probes": [
            {
                "inputs": probe,
                "mechanism": run.mechanism,
                "citation": run.citation,
                "promise": run.promise,
                "step_read_back": bool(run.resolution),
                "accumulator_dtype": run.accumulator_dtype,
                "micro_gradients": run.micro_gradients,
                "accumulated": run.accumulated,
            }
            for probe, run in zip(probes, runs, strict=True)
        ],
    }


class Unreadable(ValueError):
    """An observation that cannot be compared; the message says what is wrong, in one line."""


# what reading a hand-edited or hostile observation may raise (a number too large for a float: OverflowError)
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


@dataclass(frozen=True)
class Probe:
    run: GradientRun
    reference: ReferenceGradient
    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class GradientObservation:
    case_digest: str
    probe_seed: int
    conventions: KinkConventions
    probes: tuple[Probe, ...]


def read_gradient_observation(raw: Any, dtype: str, case: Case) -> GradientObservation:
    """An observation as `gradient_observation` wrote it, read back in `dtype` and checked against `case`, the file
    it observed: its probes must be the ones this seed draws, its gradients the case's variables; the reference and
    its bounds are derived here again, under the recorded conventions (if admissible), not taken from the file.
    Unreadable, with the reason, otherwise."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND_GRADIENTS:
        raise Unreadable("no gradient observation")
    try:
        seed, conventions, probes = _checked(raw, dtype, case)
        read = []
        for entry, inputs in zip(raw["probes"], probes, strict=True):
            gradients = _variables(entry["gradients"], case, dtype, missing_allowed=True)
            values = {name: inputs[name] for name in case.variable_names}
            run = GradientRun(float("nan"), values, values, values, gradients, gradients)
            read.append(Probe(run, exact_gradient(case, inputs, conventions, dtype), inputs))
        return GradientObservation(case.digest, seed, conventions, tuple(read))
    except MALFORMED as error:
        raise Unreadable(f"malformed gradient observation ({type(error).__name__}: {error})") from None


def _checked(raw: dict[str, Any], dtype: str, case: Case) -> tuple[int, KinkConventions, list[dict]]:
    """The seed, the conventions and the probe inputs, once they are what this case file and seed give."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r} is not one the suite runs")
    if raw["case_digest"] != case.digest:
        raise ValueError(f"observed case file {raw['case_digest']!r}, not {case.digest!r}")
    conventions = _conventions(raw)
    problem = conventions.inadmissible()
    if problem:
        raise ValueError(f"conventions: {problem}")
    seed = raw["probe_seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("probe_seed is not an integer")
    probes = probe_inputs(case, dtype, seed)
    entries = raw["probes"]
    if not isinstance(entries, list) or len(entries) != len(probes):
        raise ValueError(f"{PROBES} probes expected")
    for entry, probe in zip(entries, probes, strict=True):
        read = {name: _array(value, dtype) for name, value in dict(entry["inputs"]).items()}
        if read.keys() != probe.keys() or any(not np.array_equal(read[name], probe[name]) for name in probe):
            raise ValueError(f"the probe inputs are not those of seed {seed}")
    return seed, conventions, probes


def _variables(values: Any, case: Case, dtype: str, missing_allowed: bool) -> dict[str, np.ndarray | None]:
    """One array per variable of the case, of its shape (None, where allowed, for no gradient)."""
    values = dict(values)
    if set(values) != set(case.variable_names):
        raise ValueError(f"variables {sorted(values)}, not {sorted(case.variable_names)}")
    read: dict[str, np.ndarray | None] = {}
    for spec in case.variables:
        if values[spec.name] is None and missing_allowed:
            read[spec.name] = None
            continue
        read[spec.name] = _array(values[spec.name], dtype)
        if read[spec.name].shape != spec.shape:
            raise ValueError(f"{spec.name} has shape {read[spec.name].shape}, not {spec.shape}")
    return read


@dataclass(frozen=True)
class _Link:
    """A citation read back from a results file: only its address travels."""

    url: str


def _conventions(raw: dict[str, Any]) -> KinkConventions:
    """The conventions a record was run with; a switch it predates has its default (no case before it used it)."""
    return KinkConventions(
        **{name: float(raw["conventions"][name]) for name in SWITCH_NAMES if name in raw["conventions"]},
        citations={
            name: _Link(str(url)) for name, url in dict(raw.get("citations") or {}).items() if name in SWITCH_NAMES
        },
    )


def _array(value: Any, dtype: str) -> np.ndarray:
    """A nested list of numbers; "nan", "inf" and "-inf" (how results are written) parse too."""
    if isinstance(value, (dict, bool)):
        raise ValueError("not an array of numbers")
    return np.asarray(value, dtype=np.float64).astype(dtype)


@dataclass(frozen=True)
class UpdateProbe:
    inputs: dict[str, np.ndarray]
    hyper: dict[str, float | bool]
    run: UpdateRun


@dataclass(frozen=True)
class UpdateObservation:
    case_digest: str
    probe_seed: int
    conventions: KinkConventions
    decay_rates_in_dtype: bool
    probes: tuple[UpdateProbe, ...]
    optimizers: OptimizerDeclaration | None = None  # what the backend's adapter here declares; a file cannot say


def read_update_observation(raw: Any, dtype: str, case: Case) -> UpdateObservation:
    """An observation as `update_observation` wrote it, read back in `dtype` and checked against `case` as
    `read_gradient_observation` checks: the probes and their hyperparameters must be the ones this seed draws,
    each step's values, gradients and the final state the case's variables. Unreadable, with the reason, else."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND_UPDATES:
        raise Unreadable("no update observation")
    try:
        seed, conventions, probes = _checked(raw, dtype, case)
        hypers = probe_hyperparameters(case, dtype, seed)
        steps = case.update.steps
        read = []
        for entry, inputs, hyper in zip(raw["probes"], probes, hypers, strict=True):
            if {str(name): _hyperparameter(value) for name, value in dict(entry["hyper"]).items()} != hyper:
                raise ValueError(f"the probe hyperparameters are not those of seed {seed}")
            values = [_variables(step, case, dtype, missing_allowed=False) for step in entry["values"]]
            gradients = [_variables(step, case, dtype, missing_allowed=True) for step in entry["gradients"]]
            if len(values) != steps + 1 or len(gradients) != steps:
                raise ValueError(f"{len(values) - 1} steps recorded, not {steps}")
            state = {str(slot): _arrays(dict(arrays), "float64") for slot, arrays in dict(entry["state"]).items()}
            read.append(UpdateProbe(inputs, hyper, UpdateRun(values, gradients, state)))
        decay_rates_in_dtype = raw["decay_rates_in_dtype"]
        if not isinstance(decay_rates_in_dtype, bool):
            raise ValueError("decay_rates_in_dtype is not true or false")
        return UpdateObservation(case.digest, seed, conventions, decay_rates_in_dtype, tuple(read))
    except MALFORMED as error:
        raise Unreadable(f"malformed update observation ({type(error).__name__}: {error})") from None


def _arrays(values: dict[str, Any], dtype: str) -> dict[str, np.ndarray]:
    return {str(name): _array(value, dtype) for name, value in values.items()}


def _hyperparameter(value: Any) -> float | bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, (int, float)):
        raise ValueError(f"hyperparameter {value!r} is not a number")
    return float(value)


@dataclass(frozen=True)
class AccumulationProbe:
    inputs: dict[str, np.ndarray]
    run: AccumulationRun
    references: list[ReferenceGradient]  # the exact gradient of each micro-batch, under the observed conventions


@dataclass(frozen=True)
class AccumulationObservation:
    case_digest: str
    probe_seed: int
    conventions: KinkConventions
    probes: tuple[AccumulationProbe, ...]


def read_accumulation_observation(raw: Any, dtype: str, case: Case) -> AccumulationObservation:
    """An observation as `accumulation_observation` wrote it, read back in `dtype` and checked against `case` as
    `read_gradient_observation` checks: one gradient per micro-batch of the case, results of the case's variables,
    a reduction and accumulator dtype the properties know; a step's resolution and the exact micro-batch gradients
    are derived here again. Unreadable, with the reason, otherwise."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND_ACCUMULATION:
        raise Unreadable("no accumulation observation")
    try:
        seed, conventions, probes = _checked(raw, dtype, case)
        read = []
        for entry, inputs in zip(raw["probes"], probes, strict=True):
            batches = micro_batches(case, inputs)
            micro = [_variables(gradients, case, dtype, missing_allowed=True) for gradients in entry["micro_gradients"]]
            if len(micro) != len(batches):
                raise ValueError(f"{len(micro)} micro-batch gradients, not {len(batches)}")
            accumulated = _variables(entry["accumulated"], case, "float64", missing_allowed=False)
            promise, held, read_back = entry["promise"], entry["accumulator_dtype"], entry["step_read_back"]
            if promise not in REDUCTIONS:
                raise ValueError(f"promise {promise!r} is not one of {', '.join(REDUCTIONS)}")
            if held not in (None, "float32", "float64") or not isinstance(read_back, bool):
                raise ValueError("accumulator_dtype or step_read_back is not one the properties know")
            end = {name: np.asarray(inputs[name], np.float64) - accumulated[name] for name in accumulated}
            run = AccumulationRun(
                str(entry["mechanism"]),
                promise,
                micro,
                accumulated,
                str(entry["citation"]),
                resolution=step_resolution(inputs, end, dtype) if read_back else {},
                accumulator_dtype=held,
            )
            references = [exact_gradient(case, batch, conventions, dtype) for batch in batches]
            read.append(AccumulationProbe(inputs, run, references))
        return AccumulationObservation(case.digest, seed, conventions, tuple(read))
    except MALFORMED as error:
        raise Unreadable(f"malformed accumulation observation ({type(error).__name__}: {error})") from None
