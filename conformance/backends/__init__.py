"""The backend registry: the three built-in adapters, and third-party ones from the `conformance.backends` entry points.

Nothing here imports a framework: a backend's module is imported only when the backend is asked for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from conformance.backends.base import Backend, GradientRun, NotApplicable

BUILTIN = {
    "torch": "conformance.backends.torch:TorchBackend",
    "tensorflow": "conformance.backends.tensorflow:TensorFlowBackend",
    "jax": "conformance.backends.jax:JaxBackend",
}
ENTRY_POINT_GROUP = "conformance.backends"

__all__ = ["Backend", "GradientRun", "NotApplicable", "UnknownBackend", "known_names", "load"]


class UnknownBackend(LookupError):
    pass


def _locations() -> dict[str, str]:
    found = dict(BUILTIN)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        found[entry_point.name] = entry_point.value
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
        backend = getattr(importlib.import_module(module_name), class_name)()
        if backend.name != name:
            raise UnknownBackend(f"the backend registered as {name!r} calls itself {backend.name!r}")
        _loaded[name] = backend
    return _loaded[name]
