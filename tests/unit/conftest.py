"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from conformance import backends, faults
from conformance.faults import Patches


@pytest.fixture
def planted():
    """Where a self-test plants a fault of `conformance.faults`; undone after the test."""
    patches = Patches()
    yield patches
    patches.undo()


class OwnProcessFaults:
    """Backends that run in a process of their own (Keras 3 on jax or torch), each with a fault planted in its
    child; one child at a time (the tests of one fault run together), so that a run keeps no child per fault."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._backend = None

    def backend(self, fault_key: str):
        if fault_key != self._key:
            self.close()
            fault = faults.find(fault_key)
            proxy_class = type(backends.load(fault.backend))
            self._key, self._backend = fault_key, proxy_class(extra_environment={faults.FAULT_ENVIRONMENT: fault_key})
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._key = self._backend = None


@pytest.fixture(scope="session")
def own_process_faults():
    planted_there = OwnProcessFaults()
    yield planted_there
    planted_there.close()
