"""The backend registry: the built-in adapters, third-party ones from the `conformance.backends` entry points,
and, for one run, those named by CONFORMANCE_BACKENDS ("name=module:Class,..."; xdist workers inherit it).

Nothing here imports a framework: a backend's module is imported only when the backend is asked for.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from conformance.backends.base import Backend, GradientRun, NotApplicable

BUILTIN = {
    "torch": "conformance.backends.torch:TorchBackend",
    "tensorflow": "conformance.backends.tensorflow:TensorFlowBackend",
    "jax": "conformance.backends.jax:JaxBackend",
    "keras-jax": "conformance.backends.keras_engines:KerasJaxBackend",
    "keras-torch": "conformance.backends.keras_engines:KerasTorchBackend",
}
ENTRY_POINT_GROUP = "conformance.backends"
ENVIRONMENT_VARIABLE = "CONFORMANCE_BACKENDS"

__all__ = ["Backend", "GradientRun", "NotApplicable", "UnknownBackend", "known_names", "load", "versions"]


class UnknownBackend(LookupError):
    """A backend name, or a CONFORMANCE_BACKENDS entry, that does not resolve; the message is one line."""


def _locations() -> dict[str, str]:
    found = dict(BUILTIN)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found[entry_point.name] = entry_point.value
    found.update(_from_environment())
    return found


def _from_environment() -> dict[str, str]:
    """Backends registered for one run without installing a package: a test adapter, a local experiment."""
    found = {}
    for entry in filter(None, (part.strip() for part in os.environ.get(ENVIRONMENT_VARIABLE, "").split(","))):
        name, _, location = (part.strip() for part in entry.partition("="))
        module_name, _, class_name = location.partition(":")
        if not (name and module_name and class_name):
            raise UnknownBackend(f"{ENVIRONMENT_VARIABLE}: {entry!r} is not name=module:Class")
        found[name] = location
    return found


def known_names() -> list[str]:
    return sorted(_locations())


_loaded: dict[str, Backend] = {}


def load(name: str) -> Backend:
    """The backend called `name`, one instance per process (it holds compiled functions)."""
    if name not in _loaded:
        locations = _locations()
        if name not in locations:
            raise UnknownBackend(f"unknown backend {name!r} (known: {', '.join(sorted(locations))})")
        module_name, _, class_name = locations[name].partition(":")
        try:
            backend = getattr(importlib.import_module(module_name), class_name)()
        except (ImportError, AttributeError) as error:
            raise UnknownBackend(
                f"backend {name!r}: {locations[name]} cannot be loaded "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from None
        if backend.name != name:
            raise UnknownBackend(f"the backend registered as {name!r} calls itself {backend.name!r}")
        problem = backend.conventions.inadmissible()
        if problem:
            raise UnknownBackend(f"backend {name!r}: conventions: {problem}")
        _loaded[name] = backend
    return _loaded[name]


def versions(backend: Backend) -> dict[str, str]:
    """`backend.versions()`, or what went wrong, in one line: a framework that is installed but cannot be imported
    (a release that does not fit the others) must not end the run; its items say so as errors."""
    try:
        return dict(backend.versions())
    except Exception as error:  # noqa: BLE001 - any import-time crash of a framework is a result
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        return {backend.name: f"cannot be imported ({type(error).__name__}: {first_line})"}
