"""The suite's property tests, shipped with the package so that `conformance run` works from any install.

The plugin parametrizes each over case x backend x variant x device x dtype; the repository's
`tests/conformance/` imports them, so that `pytest` in a clone runs them too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import profiles


def property_test(name: str, requires: str | None = None) -> Callable:
    """A property test: marked for the plugin, given Hypothesis' data, under the suite's chosen profile."""

    def decorate(test: Callable) -> Callable:
        return pytest.mark.conformance(name, requires=requires)(profiles.chosen()(given(data=st.data())(test)))

    return decorate
