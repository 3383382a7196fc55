"""The plugin is loaded in every pytest session of an environment that has the package: outside the suite it must
change nothing, neither another project's Hypothesis profile nor its collection, and write nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hypothesis import settings

from conformance import profiles

UNRELATED_TESTS = """
from hypothesis import given, settings, strategies as st

def test_default_profile_is_hypothesis_own():
    # Hypothesis' own choice: "default", or its "ci" profile where the CI variable is set
    name = settings.get_current_profile_name()
    assert name in ("default", "ci")
    assert settings.default.max_examples == 100
    assert (settings.default.database is None) == (name == "ci")

@given(st.integers())
def test_a_property(number):
    assert isinstance(number, int)
"""


def run_pytest(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """pytest in `directory`, with the plugin loaded as an installed package loads it (else named with -p)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CONFORMANCE_")}
    installed = any(entry.name == "conformance" for entry in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "conformance.pytest_plugin"]
    command = [sys.executable, "-m", "pytest", "-q", *plugin, "-p", "no:cacheprovider", *arguments]
    return subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True, timeout=300)


def test_an_unrelated_project_is_unaffected(tmp_path):
    (tmp_path / "test_unrelated.py").write_text(UNRELATED_TESTS, encoding="utf-8")
    for arguments in ([], ["-n", "2"]):
        completed = run_pytest(tmp_path, *arguments)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        assert "2 passed" in completed.stdout
        assert "conformance" not in completed.stdout.replace("conformance.pytest_plugin", "")
    assert not (tmp_path / "reports").exists()


def test_the_suite_profile_is_chosen_by_its_own_names(monkeypatch):
    """`--hypothesis-profile=conformance-*` (a loaded profile of ours) first, then CONFORMANCE_PROFILE, then
    `conformance-default`; Hypothesis' own profiles never choose it."""
    monkeypatch.delenv(profiles.ENVIRONMENT_VARIABLE, raising=False)
    loaded = settings.get_current_profile_name()
    try:
        settings.load_profile("default")
        assert profiles.chosen_name() == "default" and profiles.chosen().max_examples == 10
        monkeypatch.setenv(profiles.ENVIRONMENT_VARIABLE, "conformance-ci")
        assert profiles.chosen_name() == "ci" and profiles.chosen().derandomize
        monkeypatch.setenv(profiles.ENVIRONMENT_VARIABLE, "thorough")
        assert profiles.chosen().max_examples == 200
        settings.load_profile("conformance-smoke")
        assert profiles.chosen_name() == "smoke"
        monkeypatch.setenv(profiles.ENVIRONMENT_VARIABLE, "ci ")
        settings.load_profile("default")
        with pytest.raises(profiles.UnknownProfile, match="unknown profile 'ci '"):
            profiles.chosen_name()
    finally:
        settings.load_profile(loaded)
    assert all(profile.database is None for profile in profiles.PROFILES.values())
