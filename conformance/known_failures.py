"""Failures the suite found in the frameworks themselves, as data, each with its signature.

An entry names the items it applies to (property, backend, dtype, case, variant, device) and the failure's
signature: where the values differ (a glob, `*` and `?` its only wildcards, over the failing comparisons'
locations, such as "accumulated *") and by how much at most (relative to the expected value). Every failing value
of an example must have the signature. An example that fails with that signature is the known failure: it is
recorded as such and not shrunk again; any other failure of the same item is a `fail`. An entry that applied to
items of a run but matched none of their examples is reported as stale.

Entries come from `known_failures.toml` beside this module, from a backend's `known_failures` (a backend's owner
supplies their own), and from the files named in CONFORMANCE_KNOWN_FAILURES (separated by the path separator).
Like the ONNX backend tests' exclusions, every entry says why; remove it when the framework is fixed.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from conformance.tolerance import Comparison

SHIPPED = Path(__file__).with_name("known_failures.toml")
ENVIRONMENT = "CONFORMANCE_KNOWN_FAILURES"
_REQUIRED = {"property": str, "backend": str, "where": str, "max_relative_error": (int, float), "reason": str}
_OPTIONAL = {"dtype": str, "case": str, "variant": str, "device": str}


class KnownFailureError(ValueError):
    """A known-failures file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class KnownFailure:
    property: str
    backend: str
    where: str
    max_relative_error: float
    reason: str
    dtype: str = "*"
    case: str = "*"
    variant: str = "*"  # a bug of one way of running the framework (torch's fused optimizers, an XLA step)
    device: str = "*"
    source: str = ""

    def applies_to(self, property_name: str, backend: str, dtype: str, case_id: str, variant: str, device: str) -> bool:
        return (
            self.property == property_name
            and self.backend == backend
            and _glob(self.dtype, dtype)
            and _glob(self.case, case_id)
            and _glob(self.variant, variant)
            and _glob(self.device, device)
        )

    def matches(self, comparison: Comparison) -> bool:
        """Every failing value of the example has this entry's signature: at the named values, and no element
        further from its expected value (relatively) than stated."""
        failures = comparison.failures()
        return bool(failures) and all(
            _glob(self.where, failure.where) and failure.failing_relative_error <= self.max_relative_error
            for failure in failures
        )


def _glob(pattern: str, text: str) -> bool:
    """`*` and `?` as wildcards, everything else literal: locations such as `w (mean)[0]` hold brackets."""
    expression = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(expression, text, flags=re.DOTALL) is not None


def parse(document: dict, source: str) -> list[KnownFailure]:
    entries = document.get("known", [])
    unknown = set(document) - {"known"}
    if unknown:
        raise KnownFailureError(f"{source}: {sorted(unknown)[0]}: unknown field (entries are [[known]] tables)")
    if not isinstance(entries, list):
        raise KnownFailureError(f"{source}: known: is not an array of tables ([[known]])")
    return [_entry(entry, f"{source}: known[{index}]", source) for index, entry in enumerate(entries)]


def _entry(entry: object, where: str, source: str) -> KnownFailure:
    if not isinstance(entry, dict):
        raise KnownFailureError(f"{where}: is not a table")
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise KnownFailureError(f"{where}.{unknown[0]}: unknown field (known: {', '.join([*_REQUIRED, *_OPTIONAL])})")
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in entry:
            if name in _REQUIRED:
                raise KnownFailureError(f"{where}.{name}: missing")
        elif not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            raise KnownFailureError(f"{where}.{name}: has the wrong type ({type(entry[name]).__name__})")
    bound = float(entry["max_relative_error"])
    if not (math.isfinite(bound) and bound > 0):
        raise KnownFailureError(f"{where}.max_relative_error: must be a positive finite number, not {bound!r}")
    return KnownFailure(**{**entry, "max_relative_error": bound}, source=source)


def load(path: Path) -> list[KnownFailure]:
    try:
        with path.open("rb") as file:
            return parse(tomllib.load(file), str(path))
    except OSError as error:
        raise KnownFailureError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise KnownFailureError(f"{path}: not valid TOML ({str(error).splitlines()[0]})") from None


def collect(backends: list) -> list[KnownFailure]:
    """The shipped entries, every backend's own, and those of the files in CONFORMANCE_KNOWN_FAILURES."""
    entries = load(SHIPPED)
    for backend in backends:
        entries += list(getattr(backend, "known_failures", ()))
    for path in filter(None, os.environ.get(ENVIRONMENT, "").split(os.pathsep)):
        entries += load(Path(path))
    return entries
