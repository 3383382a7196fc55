"""The suite's property tests, shipped with the package so that `conformance run` works from any install.

The plugin parametrizes each over case x backend x variant x device x dtype; the repository's
`tests/conformance/` imports them, so that `pytest` in a clone runs them too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import profiles


def property_test(name: str, requires: str | None = None, first_variant_only: bool = False) -> Callable:
    """A property test: marked for the plugin (`first_variant_only`: of a backend's update variants), given
    Hypothesis' data, under the suite's chosen profile, and targeted at the example's largest error / tolerance."""

    def decorate(test: Callable) -> Callable:
        @functools.wraps(test)
        def targeted(conformance_item, data):
            conformance_item.example_ratio = None
            test(conformance_item, data)
            if conformance_item.example_ratio is not None:
                # one label for the whole example: Hypothesis hill-climbs each label apart, and a failing
                # item pays for every one before it shrinks
                hypothesis.target(conformance_item.example_ratio, label="error / tolerance")

        marker = pytest.mark.conformance(name, requires=requires, first_variant_only=first_variant_only)
        return marker(profiles.chosen()(given(data=st.data())(targeted)))

    return decorate
