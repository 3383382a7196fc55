"""The shipped property tests of `conformance/property_tests/test_updates.py`, collected here too: `pytest` in a clone runs them."""

from conformance.property_tests.test_updates import test_update_matches_reference, test_update_agrees_across_backends, test_accumulation_linear, test_accumulation_native, test_update_goldens  # noqa: F401
