"""Observations: what a backend computed at probe inputs that every run draws alike for the same case file, dtype
and seed, recorded with the result so that runs made apart (another backend, version, device or machine) can be
compared after the fact, with the bounds and conventions each run derived, and no framework installed.

The probes: the point of the declared ranges nearest zero (where kinks and ties sit), then random points drawn
from a generator seeded by the case id, the case file's digest, the dtype and the probe seed (the run's
`--hypothesis-seed`, else 0)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.backends.base import GradientRun
from conformance.cases import Case
from conformance.reference.conventions import SWITCH_NAMES, KinkConventions
from conformance.reference.gradients import ReferenceGradient
from conformance.strategies import representable_range

PROBES = 3
KIND_GRADIENTS = "gradients"


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


def digest(probes: list[dict[str, np.ndarray]]) -> str:
    """Of the probe inputs' names, dtypes, shapes and bytes: two runs compare only what they computed alike."""
    hashed = hashlib.sha256()
    for probe in probes:
        for name in sorted(probe):
            value = np.ascontiguousarray(probe[name])
            hashed.update(f"{name}|{value.dtype}|{value.shape}|".encode())
            hashed.update(value.tobytes())
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
        conventions = KinkConventions(
            **{name: float(raw["conventions"][name]) for name in SWITCH_NAMES},
            citations={
                name: _Link(str(url)) for name, url in dict(raw.get("citations") or {}).items() if name in SWITCH_NAMES
            },
        )
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
