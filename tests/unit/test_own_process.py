"""A backend in a process of its own (Keras 3 on jax or torch) is a proxy: each call runs in the child and comes back
as the adapter there returned or raised it; a crash of the child is an error of that call, and the next call starts
a fresh child. Faults are planted in the child of the backend they belong to, and nowhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conformance import faults
from conformance.backends import NotApplicable
from conformance.backends.own_process import ProcessEnded
from conformance.cases import load_case

FIXTURES = Path(__file__).parents[1] / "fixtures"
CRASH_CASES = FIXTURES / "crash_cases"


@pytest.fixture
def proxy(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setenv("PYTHONPATH", str(FIXTURES))
    from own_process_backend import MisbehavingInItsOwnProcess

    backend = MisbehavingInItsOwnProcess()
    yield backend
    backend.close()


def crash_case(name: str):
    return load_case(CRASH_CASES / f"{name}.toml", CRASH_CASES)


def tagged(tmp_path: Path, tag: str):
    path = tmp_path / f"{tag}.toml"
    path.write_text(f'title = "{tag}"\ntags = ["{tag}"]\n[variables.x]\nvalue = 2.0\n[loss]\nexpr = "x ** 2"\n')
    return load_case(path, tmp_path)


def test_calls_run_in_a_child_with_the_adapters_environment(proxy):
    versions = proxy.versions()
    assert versions["pid"] != str(os.getpid())
    assert versions["marker"] == "set in the child"
    assert os.environ.get("OWN_PROCESS_BACKEND_MARKER") is None  # set there, not here


def test_only_what_the_adapter_implements_is_forwarded(proxy):
    from own_process_backend import Misbehaving

    from conformance.backends.base import Backend

    assert type(proxy).gradients is not Misbehaving.gradients  # forwarded
    assert type(proxy).accumulation is Backend.accumulation  # as the adapter: its accumulation items not applicable
    assert type(proxy).updates is Backend.updates


def test_results_come_back_as_the_adapter_computed_them(proxy):
    from own_process_backend import Misbehaving

    case = crash_case("1-healthy")
    inputs = {"x": np.float64(0.3)}
    there = proxy.gradients(case, inputs, "float64", "default", "cpu")
    here = Misbehaving().gradients(case, inputs, "float64", "default", "cpu")
    assert there.loss == here.loss
    assert there.gradients["x"].dtype == here.gradients["x"].dtype == np.float64
    np.testing.assert_array_equal(there.gradients["x"], here.gradients["x"])


def test_not_applicable_and_exceptions_cross_as_raised(proxy, tmp_path):
    with pytest.raises(NotApplicable, match="this framework has no such thing"):
        proxy.gradients(tagged(tmp_path, "not-applicable"), {"x": 1.0}, "float32", "default", "cpu")
    with pytest.raises(ValueError, match=r"^a value the framework refuses$"):  # the first line, as item.call keeps
        proxy.gradients(tagged(tmp_path, "value-error"), {"x": 1.0}, "float32", "default", "cpu")
    with pytest.raises(RuntimeError, match=r"^FrameworkError: the framework's own complaint$"):
        proxy.gradients(tagged(tmp_path, "own-error"), {"x": 1.0}, "float32", "default", "cpu")


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
@pytest.mark.parametrize(("name", "signal"), [("3-segfault", "signal 11"), ("2-abort", "signal 6")])
def test_a_crash_is_an_error_of_the_call_and_the_next_call_starts_afresh(proxy, name, signal):
    first_child = proxy.versions()["pid"]
    with pytest.raises(ProcessEnded, match=f"the misbehaving process ended during gradients \\({signal}"):
        proxy.gradients(crash_case(name), {"x": 1.0}, "float32", "default", "cpu")
    assert proxy.versions()["pid"] != first_child
    healthy = proxy.gradients(crash_case("1-healthy"), {"x": 1.0}, "float32", "default", "cpu")
    assert healthy.gradients["x"] == pytest.approx(-12.0)  # d/dx (3x + 5 - 10)^2 at x = 1


def test_a_fault_of_an_own_process_backend_is_planted_in_its_process_only(monkeypatch):
    monkeypatch.setattr(faults, "_planted", None)
    monkeypatch.setenv(faults.FAULT_ENVIRONMENT, "longer-step:keras-torch")
    assert faults.find("longer-step:keras-torch").own_process
    assert faults.plant_from_environment() == "longer-step:keras-torch"
    assert faults._planted is None  # the pytest process leaves it to keras-torch's child
    faults.plant_in_process("keras-jax")
    assert faults._planted is None  # and keras-jax's child leaves it alone


def test_every_own_process_fault_names_an_own_process_backend():
    from conformance import backends
    from conformance.backends.own_process import OwnProcess

    for fault in faults.FAULTS:
        assert fault.own_process == isinstance(backends.load(fault.backend), OwnProcess), fault.key


ORPHAN = """
import os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from own_process_backend import MisbehavingInItsOwnProcess
from conformance.cases import load_case
proxy = MisbehavingInItsOwnProcess()
print(proxy.versions()["pid"], flush=True)
case = load_case(os.path.join(sys.argv[2], "4-hang.toml"), sys.argv[2])
threading.Thread(target=proxy.gradients, args=(case, {"x": 1.0}, "float32", "default", "cpu"), daemon=True).start()
time.sleep(1.0)
os._exit(0)  # as a worker ended for a timeout: no cleanup, the child busy in its call
"""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an ended child not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_busy_child_ends_when_its_parent_does(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(FIXTURES))
    completed = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(FIXTURES), str(CRASH_CASES)], capture_output=True, text=True, timeout=60
    )
    child = int(completed.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(child), "the child outlived its parent"
