"""The shipped property tests of `conformance/property_tests/test_gradients.py`, collected here too: `pytest` in a clone runs them."""

from conformance.property_tests.test_gradients import test_values_unchanged, test_repeatable, test_matches_reference, test_agrees_across_backends, test_goldens  # noqa: F401
