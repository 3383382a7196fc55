"""Observations: what a backend computed at probe inputs that every run draws alike for the same case file, dtype
and seed, recorded with the result so that runs made apart (another backend, version, device or machine) can be
compared after the fact, with the bounds and conventions each run derived, and no framework installed.

The probes: the point of the declared ranges nearest zero (where kinks and ties sit), then random points drawn
from a generator seeded by the case id, the case file's digest, the dtype and the probe seed (the run's
`--hypothesis-seed`, else 0); an update case's probes carry hyperparameters drawn from their ranges too (the
lower end first)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.backends.base import GradientRun, UpdateRun
from conformance.cases import Case
from conformance.reference.conventions import SWITCH_NAMES, KinkConventions
from conformance.reference.gradients import ReferenceGradient
from conformance.strategies import representable_range

PROBES = 3
KIND_GRADIENTS = "gradients"
KIND_UPDATES = "updates"


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


def digest(probes: list[dict[str, np.ndarray]], hyperparameters: list[dict] | None = None) -> str:
    """Of the probe inputs' names, dtypes, shapes and bytes: two runs compare only what they computed alike."""
    hashed = hashlib.sha256()
    for probe in probes:
        for name in sorted(probe):
            value = np.ascontiguousarray(probe[name])
            hashed.update(f"{name}|{value.dtype}|{value.shape}|".encode())
            hashed.update(value.tobytes())
    for hyper in hyperparameters or []:
        hashed.update(repr(sorted(hyper.items())).encode())
    return hashed.hexdigest()[:16]


def gradient_observation(
    case: Case,
    seed: int,
    probes: list[dict[str, np.ndarray]],
    runs: list[GradientRun],
    references: list[ReferenceGradient],
    conventions: KinkConventions,
) -> dict[str, Any]:
    """The JSON-ready observation of one item: its probes, gradients, and the reference under its conventions."""
    return {
        "kind": KIND_GRADIENTS,
        "case_digest": case.digest,
        "probe_seed": seed,
        "probe_digest": digest(probes),
        "conventions": {name: getattr(conventions, name) for name in SWITCH_NAMES},
        "citations": {name: citation.url for name, citation in conventions.citations.items()},
        "probes": [
            {
                "inputs": probe,
                "gradients": run.gradients,
                "reference": reference.gradients,
                "bounds": reference.bounds,
            }
            for probe, run, reference in zip(probes, runs, references, strict=True)
        ],
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
        "kind": KIND_UPDATES,
        "case_digest": case.digest,
        "probe_seed": seed,
        "probe_digest": digest(probes, hyperparameters),
        "conventions": {name: getattr(conventions, name) for name in SWITCH_NAMES},
        "citations": {name: citation.url for name, citation in conventions.citations.items()},
        "decay_rates_in_dtype": decay_rates_in_dtype,
        "probes": [
            {"inputs": probe, "hyper": hyper, "values": run.values, "gradients": run.gradients, "state": run.state}
            for probe, hyper, run in zip(probes, hyperparameters, runs, strict=True)
        ],
    }


class Unreadable(ValueError):
    """An observation that cannot be compared; the message says what is wrong, in one line."""


@dataclass(frozen=True)
class Probe:
    run: GradientRun
    reference: ReferenceGradient
    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class GradientObservation:
    case_digest: str
    probe_seed: int
    probe_digest: str
    conventions: KinkConventions
    probes: tuple[Probe, ...]


def read_gradient_observation(raw: Any, dtype: str) -> GradientObservation:
    """An observation as `gradient_observation` wrote it, read back in `dtype`; Unreadable if it is not one."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND_GRADIENTS:
        raise Unreadable("no gradient observation")
    try:
        conventions = _conventions(raw)
        probes = tuple(_probe(entry, dtype) for entry in raw["probes"])
        return GradientObservation(
            str(raw["case_digest"]), int(raw["probe_seed"]), str(raw["probe_digest"]), conventions, probes
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Unreadable(f"malformed gradient observation ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class _Link:
    """A citation read back from a results file: only its address travels."""

    url: str


def _conventions(raw: dict[str, Any]) -> KinkConventions:
    return KinkConventions(
        **{name: float(raw["conventions"][name]) for name in SWITCH_NAMES},
        citations={
            name: _Link(str(url)) for name, url in dict(raw.get("citations") or {}).items() if name in SWITCH_NAMES
        },
    )


def _array(value: Any, dtype: str) -> np.ndarray:
    """A nested list of numbers; "nan", "inf" and "-inf" (how results are written) parse too."""
    if isinstance(value, (dict, bool)):
        raise ValueError("not an array of numbers")
    return np.asarray(value, dtype=np.float64).astype(dtype)


def _probe(entry: dict[str, Any], dtype: str) -> Probe:
    inputs = {name: _array(value, dtype) for name, value in entry["inputs"].items()}
    gradients = {name: None if value is None else _array(value, dtype) for name, value in entry["gradients"].items()}
    values = {name: inputs[name] for name in gradients}
    run = GradientRun(float("nan"), values, values, values, gradients, gradients)
    reference = ReferenceGradient(
        float("nan"),
        {name: _array(value, "float64") for name, value in entry["reference"].items()},
        {name: _array(value, "float64") for name, value in entry["bounds"].items()},
    )
    if set(reference.gradients) != set(gradients) or set(reference.bounds) != set(gradients):
        raise ValueError("gradients, reference and bounds name different variables")
    return Probe(run, reference, inputs)


@dataclass(frozen=True)
class UpdateProbe:
    inputs: dict[str, np.ndarray]
    hyper: dict[str, float | bool]
    run: UpdateRun


@dataclass(frozen=True)
class UpdateObservation:
    case_digest: str
    probe_seed: int
    probe_digest: str
    conventions: KinkConventions
    decay_rates_in_dtype: bool
    probes: tuple[UpdateProbe, ...]


def read_update_observation(raw: Any, dtype: str) -> UpdateObservation:
    """An observation as `update_observation` wrote it, read back in `dtype`; Unreadable if it is not one."""
    if not isinstance(raw, dict) or raw.get("kind") != KIND_UPDATES:
        raise Unreadable("no update observation")
    try:
        probes = tuple(
            UpdateProbe(
                {name: _array(value, dtype) for name, value in entry["inputs"].items()},
                {str(name): _hyperparameter(value) for name, value in entry["hyper"].items()},
                UpdateRun(
                    [_arrays(values, dtype) for values in entry["values"]],
                    [_arrays(gradients, dtype) for gradients in entry["gradients"]],
                    {str(slot): _arrays(values, "float64") for slot, values in entry["state"].items()},
                ),
            )
            for entry in raw["probes"]
        )
        return UpdateObservation(
            str(raw["case_digest"]),
            int(raw["probe_seed"]),
            str(raw["probe_digest"]),
            _conventions(raw),
            bool(raw["decay_rates_in_dtype"]),
            probes,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Unreadable(f"malformed update observation ({type(error).__name__}: {error})") from None


def _arrays(values: dict[str, Any], dtype: str) -> dict[str, np.ndarray | None]:
    return {str(name): None if value is None else _array(value, dtype) for name, value in values.items()}


def _hyperparameter(value: Any) -> float | bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, (int, float)):
        raise ValueError(f"hyperparameter {value!r} is not a number")
    return float(value)
