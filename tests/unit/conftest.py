"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from conformance.faults import Patches


@pytest.fixture
def planted():
    """Where a self-test plants a fault of `conformance.faults`; undone after the test."""
    patches = Patches()
    yield patches
    patches.undo()
