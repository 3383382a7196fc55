"""The property tests shipped in `conformance/property_tests/test_gradients.py`: `pytest` in a clone runs them."""

from conformance.property_tests.test_gradients import (
    test_agrees_across_backends,
    test_goldens,
    test_gradients_at_probes,
    test_matches_reference,
    test_repeatable,
    test_values_unchanged,
)

__all__ = [
    "test_values_unchanged",
    "test_repeatable",
    "test_matches_reference",
    "test_gradients_at_probes",
    "test_agrees_across_backends",
    "test_goldens",
]
