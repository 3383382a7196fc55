"""A backend cannot declare its way to a pass: conventions outside the admissible range, or an adapter that cannot
be loaded, are refused when the backend loads, in one line naming the backend."""

from __future__ import annotations

import sys

import pytest

from conformance import backends
from conformance.cli import main_run
from conformance.reference.conventions import KinkConventions

STEEP = """
from conformance.backends.base import Backend
from conformance.reference.conventions import KinkConventions


class SteepAbs(Backend):
    name = "steep"
    conventions = KinkConventions(abs_slope_at_zero=7.0)
"""


@pytest.fixture
def registered(monkeypatch, tmp_path):
    """Registers a backend that declares abs' slope at 0 to be 7 through CONFORMANCE_BACKENDS, as others would."""
    (tmp_path / "steep_backend.py").write_text(STEEP, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CONFORMANCE_BACKENDS", "steep=steep_backend:SteepAbs,missing=no_such_module:Nothing")
    monkeypatch.setattr(backends, "_loaded", {})
    yield
    sys.modules.pop("steep_backend", None)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"abs_slope_at_zero": 7.0}, "abs_slope_at_zero = 7.0 is outside [-1, 1]"),
        ({"abs_slope_at_zero": float("nan")}, "abs_slope_at_zero = nan is not a number"),
        ({"maximum_tie_to_first": 1.5}, "maximum_tie_to_first = 1.5 is outside [0, 1]"),
        ({"minimum_tie_to_first": -0.5}, "minimum_tie_to_first = -0.5 is outside [0, 1]"),
        ({"softplus_linear_above": 2.0}, "softplus_linear_above = 2.0 is below 14.0"),
    ],
)
def test_inadmissible_conventions_are_named(values, problem):
    assert problem in KinkConventions(**values).inadmissible()


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"abs_slope_at_zero": 1.0},
        {"abs_slope_at_zero": -1.0},
        {"maximum_tie_to_first": 1.0},
        {"softplus_linear_above": 20.0},
    ],
)
def test_every_honest_convention_is_admissible(values):
    assert KinkConventions(**values).inadmissible() is None


def test_the_builtin_backends_are_admissible():
    for name in ("torch", "tensorflow", "jax"):
        assert backends.load(name).conventions.inadmissible() is None


def test_a_backend_with_inadmissible_conventions_is_refused_in_one_line(registered, capsys):
    with pytest.raises(backends.UnknownBackend, match="backend 'steep': conventions: abs_slope_at_zero = 7.0"):
        backends.load("steep")
    assert main_run(["--backend", "steep"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "conformance run: backend 'steep': conventions: abs_slope_at_zero = 7.0 is outside [-1, 1], the "
        "subgradients of |x| at 0"
    ]


def test_a_backend_that_cannot_be_imported_is_one_line(registered, capsys):
    assert main_run(["--backend", "missing"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("conformance run: backend 'missing': no_such_module:Nothing cannot")
