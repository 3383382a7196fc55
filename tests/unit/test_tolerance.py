"""The one place that judges closeness: special values by category first, then error against the bound.

A mistake here would pass a broken backend or fail an honest one in every property at once.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conformance.tolerance import Comparison, compare, identical, worst

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("actual", "expected", "ok"),
    [
        (NAN, NAN, True),
        (NAN, 1.0, False),
        (1.0, NAN, False),
        pytest.param(INF, INF, True, marks=pytest.mark.filterwarnings("ignore:invalid value")),
        pytest.param(-INF, -INF, True, marks=pytest.mark.filterwarnings("ignore:invalid value")),
        (INF, -INF, False),
        (-INF, INF, False),
        (INF, 1e308, False),
        (NAN, INF, False),
        (-0.0, 0.0, True),
        (0.0, -0.0, True),
    ],
)
def test_special_values_are_compared_by_category(actual, expected, ok):
    result = compare("g", np.array([1.0, actual]), np.array([1.0, expected]), 0.0)
    assert result.ok is ok
    if not ok:
        assert result.where == "g[1]" and result.max_error == INF and repr(actual) in result.detail


def test_matching_infinities_raise_no_warning():
    """Under `-W error` (common in CI) a RuntimeWarning from matching infinities would crash the property."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compare("g", np.array([1.0, INF, -INF]), np.array([1.0, INF, -INF]), 0.0).ok


def test_negative_zero_is_a_different_bit_pattern():
    """compare() accepts -0.0 for 0.0 (equal numbers); identical() must not, since it guards against any change."""
    assert not identical("x", np.array(-0.0), np.array(0.0)).ok
    assert identical("x", np.array([0.0, -0.0]), np.array([0.0, -0.0])).ok


def test_identical_treats_nans_with_the_same_bits_as_equal():
    assert identical("x", np.array([NAN, 1.0]), np.array([NAN, 1.0])).ok


def test_identical_catches_one_ulp_and_names_the_element():
    before = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    after = before.copy()
    after[1, 0] = np.nextafter(after[1, 0], np.float32(np.inf))
    result = identical("w", before, after)
    assert not result.ok and result.where == "w[1, 0]" and result.max_error == pytest.approx(2.0**-22)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (np.zeros(3), np.zeros(4)),
        (np.zeros((2, 3)), np.zeros((3, 2))),
        (np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.float64)),
    ],
)
def test_identical_requires_the_same_shape_and_dtype(first, second):
    result = identical("x", first, second)
    assert not result.ok and "became" in result.detail


@pytest.mark.parametrize(
    ("actual", "expected"),
    [(np.zeros(3), np.zeros(4)), (np.zeros((2, 3)), np.zeros((3, 2))), (np.zeros(()), np.zeros(1))],
)
def test_compare_rejects_a_shape_mismatch(actual, expected):
    result = compare("g", actual, expected, 1.0)
    assert not result.ok and result.max_error == INF and "shape" in result.detail


def test_an_error_exactly_at_the_bound_passes_and_just_above_fails():
    expected, bound = 1.0, 2.0**-20
    at_bound = expected + bound  # exact in float64, so the error is exactly the bound
    assert compare("g", np.array(at_bound), np.array(expected), bound).ok
    above = np.nextafter(at_bound, INF)
    result = compare("g", np.array(above), np.array(expected), bound)
    assert not result.ok and result.max_error > result.tolerance == bound and "+-" in result.detail


def test_a_zero_bound_demands_exact_equality():
    assert compare("g", np.array(1.5), np.array(1.5), 0.0).ok
    assert not compare("g", np.array(np.nextafter(1.5, 2.0)), np.array(1.5), 0.0).ok


def test_zero_dimensional_arrays():
    result = compare("loss", np.array(1.0 + 1e-9), np.array(1.0), np.array(1e-8))
    assert result.ok and result.where == "loss" and result.max_error == pytest.approx(1e-9)
    assert not compare("loss", np.float32(1.1), np.float64(1.0), 1e-3).ok
    assert identical("loss", np.array(2.0), np.array(2.0)).ok


def test_the_worst_element_is_the_one_furthest_from_its_own_bound():
    """Not the largest absolute error: a small error against a tight bound is the one that matters."""
    result = compare("g", np.array([1.0 + 1e-3, 1e-6 + 5e-10]), np.array([1.0, 1e-6]), np.array([1e-2, 1e-9]))
    assert result.ok and result.where == "g[1]" and result.ratio == pytest.approx(0.5, rel=1e-6)
    result = compare("g", np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 0.0], [0.0, 0.0]]), 0.5)
    assert not result.ok and result.where == "g[1, 1]"


def test_actual_in_float32_is_compared_with_expected_in_float64():
    expected = np.array([0.1, 1 / 3])
    actual = expected.astype(np.float32)
    assert compare("g", actual, expected, np.abs(expected) * 2.0**-24).ok
    assert not compare("g", actual, expected, np.abs(expected) * 2.0**-30).ok


def test_worst_prefers_a_failure_then_the_largest_ratio():
    close = Comparison(True, 0.9, 1.0, "close")
    far = Comparison(True, 0.1, 1.0, "far")
    broken, also_broken = Comparison(False, 2.0, 1.0, "broken"), Comparison(False, 9.0, 1.0, "also broken")
    assert worst([far, close]) == close
    combined = worst([close, broken, also_broken])
    assert combined.where == "broken" and combined.failures() == (broken, also_broken)
    assert worst([]).ok and worst([]).where == ""


def test_sensitivity_is_the_smallest_relative_error_the_bounds_catch():
    """bound / |expected|, least over the finite nonzero elements and over every comparison combined."""
    comparison = compare("g", np.array([1.0, 4.0, 0.0]), np.array([1.0, 4.0, 0.0]), np.array([1e-3, 1e-3, 1e-3]))
    assert comparison.sensitivity == pytest.approx(2.5e-4)
    other = compare("h", np.array([10.0]), np.array([10.0]), 1e-5)
    assert worst([comparison, other]).sensitivity == pytest.approx(1e-6)
    assert compare("zeros", np.zeros(2), np.zeros(2), 1.0).sensitivity == INF
    # a result off by slightly more than the sensitivity in every element fails
    off = 1 + 2.5e-4 * 1.01
    assert not compare("g", np.array([1.0, 4.0]) * off, np.array([1.0, 4.0]), 1e-3).ok


def test_ratio_of_a_zero_tolerance():
    assert Comparison(True, 0.0, 0.0, "").ratio == 0.0
    assert Comparison(False, 1.0, 0.0, "").ratio == INF
