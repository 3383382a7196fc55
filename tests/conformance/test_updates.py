"""The property tests shipped in `conformance/property_tests/test_updates.py`: `pytest` in a clone runs them."""

from conformance.property_tests.test_updates import (
    test_accumulation_at_probes,
    test_accumulation_linear,
    test_accumulation_native,
    test_update_agrees_across_backends,
    test_update_goldens,
    test_update_matches_reference,
    test_updates_at_probes,
)

__all__ = [
    "test_update_matches_reference",
    "test_updates_at_probes",
    "test_update_agrees_across_backends",
    "test_accumulation_linear",
    "test_accumulation_native",
    "test_accumulation_at_probes",
    "test_update_goldens",
]
