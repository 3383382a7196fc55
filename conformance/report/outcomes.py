"""The outcome vocabulary of the page: how bad each outcome is, and how it reads without colour."""

from __future__ import annotations

from collections.abc import Iterable

# Worst first: a cell shows the worst outcome of its records.
SEVERITY = {"error": 5, "fail": 4, "divergent": 3, "not_applicable": 2, "skip": 1, "pass": 0}
ORDER = tuple(sorted(SEVERITY, key=SEVERITY.__getitem__, reverse=True))
SYMBOL = {"pass": "✓", "fail": "✗", "divergent": "≈", "not_applicable": "–", "skip": "–", "error": "!"}
LABEL = {
    "pass": "pass",
    "fail": "fail",
    "divergent": "divergent",
    "not_applicable": "n/a",
    "skip": "skip",
    "error": "error",
}
MEANING = {
    "pass": "matches the reference within tolerance",
    "fail": "unexplained difference or broken property",
    "divergent": "differs, and the difference is explained",
    "not_applicable": "no native equivalent",
    "skip": "not run",
    "error": "the harness or backend crashed",
}


def worst(outcomes: Iterable[str]) -> str:
    """The most severe outcome; 'pass' when there is none."""
    return max(outcomes, key=SEVERITY.__getitem__, default="pass")
