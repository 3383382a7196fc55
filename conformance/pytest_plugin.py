"""The pytest plugin: options, Hypothesis profiles, parametrization over case x backend x variant x device x dtype,
and one results record per item, written by the controlling process (xdist workers send theirs along).

A framework that crashes or hangs ends only its xdist worker: each item's setup report carries the record it
will have if its worker dies, and the controller writes it as an `error` that says how the worker ended.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from conformance import backends as backend_registry
from conformance import faults, known_failures
from conformance.cases import Case, CaseError, load_cases
from conformance.item import ConformanceItem, ItemSpec
from conformance.results import ResultRecord, ResultsWriter, clean, new_run_id, run_header

SHIPPED_CASES = Path(__file__).resolve().parent.parent / "cases"
DTYPES = ("float32", "float64")
RECORD_KEY = "conformance_record"
STARTED_KEY = "conformance_record_if_crashed"
TIMED_OUT = 124  # the exit status of a worker that ended a hung item, as timeout(1) uses it

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                      HealthCheck.data_too_large], print_blob=True)  # fmt: skip
settings.register_profile("default", max_examples=10, **_common)
settings.register_profile("ci", max_examples=10, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=200, **_common)
settings.register_profile("smoke", max_examples=1, phases=[Phase.explicit, Phase.generate], **_common)
settings.load_profile(os.environ.get("CONFORMANCE_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "gradient and optimizer conformance")
    group.addoption("--backend", action="append", default=[], metavar="NAME",
                    help="a backend to run (repeatable; default: every known backend, missing ones skip)")
    group.addoption("--cases", action="append", default=[], metavar="PATH",
                    help="a case file or directory (repeatable; default: the shipped cases, which 'shipped' names)")
    group.addoption("--dtype", action="append", default=[], choices=DTYPES, help="dtypes to run (default: both)")
    group.addoption("--results", metavar="FILE", help="write JSON Lines results to FILE")
    group.addoption("--item-timeout", type=float, default=300.0, metavar="SECONDS",
                    help="a conformance item running longer ends its process (an xdist worker, which is replaced) "
                         "and is an error (default 300; 0: none)")  # fmt: skip


@dataclass
class SuiteConfig:
    cases: list[Case]
    backend_names: list[str]
    dtypes: list[str]
    known: list[known_failures.KnownFailure]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(property, requires=None): a property test of the suite")
    try:
        faults.plant_from_environment()  # `conformance mutate` runs the suite against a planted fault
    except ValueError as error:
        raise pytest.UsageError(f"{faults.FAULT_ENVIRONMENT}: {error}") from None
    try:
        config._conformance = SuiteConfig(
            cases=load_cases([SHIPPED_CASES if path == "shipped" else Path(path)
                              for path in config.getoption("cases") or ["shipped"]]),
            backend_names=config.getoption("backend") or backend_registry.known_names(),
            dtypes=config.getoption("dtype") or list(DTYPES),
            known=[],
        )  # fmt: skip
        known = backend_registry.known_names()
    except (CaseError, backend_registry.UnknownBackend) as error:
        raise pytest.UsageError(str(error)) from None
    unknown = set(config._conformance.backend_names) - set(known)
    if unknown:
        raise pytest.UsageError(f"--backend: unknown backend {sorted(unknown)[0]!r} (known: {', '.join(known)})")
    try:
        config._conformance.known = known_failures.collect([backend_registry.load(name) for name in config._conformance.backend_names])
    except (known_failures.KnownFailureError, backend_registry.UnknownBackend) as error:
        raise pytest.UsageError(str(error)) from None
    _interrupt_on_sigterm(config)
    if hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(_WorkerCrashes(config.getoption("item_timeout")), "conformance-worker-crashes")
    results = config.getoption("results")
    if results:
        config.pluginmanager.register(_ResultsFile(ResultsWriter(Path(results), _header(config))), "conformance-results")


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a cancelled CI job, `kill`) ends the run as Ctrl-C does: pytest finishes and closes the results."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:  # someone else's handler stays
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


class _ResultsFile:
    """Writes the records that items attach to their reports; in the controller only, when --results is given."""

    def __init__(self, writer: ResultsWriter):
        self.writer = writer

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == RECORD_KEY:
                self.writer.write(ResultRecord(**json.loads(value)))

    def pytest_unconfigure(self) -> None:
        self.writer.close()


class _WorkerCrashes:
    """In the controller: the item a worker was running when it died (a crash, or its timeout) becomes an error."""

    def __init__(self, item_timeout: float):
        self.item_timeout = item_timeout
        self.running: dict[str, tuple[str, float]] = {}  # nodeid -> (its record if it crashes, when it started)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == STARTED_KEY:
                self.running[report.nodeid] = (value, time.monotonic())
            elif key == RECORD_KEY:
                self.running.pop(report.nodeid, None)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport) -> None:
        message = self._how_it_ended(getattr(report, "node", None))
        report.longrepr = f"{crashitem}: {message}"
        if crashitem in self.running:
            started, since = self.running.pop(crashitem)
            elapsed = time.monotonic() - since  # from when this process heard of the item: late by its own delays
            if message.startswith("timed out"):
                elapsed = max(elapsed, self.item_timeout)
            record = {**json.loads(started), "message": message, "elapsed_s": round(elapsed, 4)}
            report.user_properties.append((RECORD_KEY, json.dumps(record)))

    def _how_it_ended(self, worker) -> str:
        status = _exit_status(worker)
        if status == TIMED_OUT:
            return f"timed out after {self.item_timeout:g} s"
        if status is None:
            return "worker crashed"
        if status >= 0:
            return f"worker crashed: exit status {status}"
        try:
            return f"worker crashed: signal {-status} ({signal.Signals(-status).name})"
        except ValueError:
            return f"worker crashed: signal {-status}"


def _exit_status(worker) -> int | None:
    """A dead xdist worker's exit status (negative: the signal); execnet has no public API for its process."""
    process = getattr(getattr(getattr(worker, "gateway", None), "_io", None), "popen", None)
    try:
        return process.wait(timeout=10) if process is not None else None
    except subprocess.TimeoutExpired:
        return None


def _header(config: pytest.Config) -> dict:
    frameworks, devices = {}, {}
    for name in config._conformance.backend_names:
        backend = backend_registry.load(name)
        if backend.unavailable_reason() is None:
            frameworks.update(backend.versions())
            devices[name] = backend.devices()
    seed = config.getoption("hypothesis_seed", default=None)
    profile = config.getoption("hypothesis_profile", default=None) or os.environ.get("CONFORMANCE_PROFILE", "default")
    return run_header(new_run_id(), frameworks, devices, None if seed is None else str(seed), profile)


def _selected(case: Case, requires: str | None) -> bool:
    return {
        None: True,
        "update": case.update is not None,
        "no_update": case.update is None,
        "accumulate": case.micro_batches is not None,
        "expect": bool(case.expect) and case.update is None,
        "expect_update": bool(case.expect) and case.update is not None,
    }[requires]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_item" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("conformance")
    suite: SuiteConfig = metafunc.config._conformance
    params = []
    for case in suite.cases:
        if not _selected(case, marker.kwargs.get("requires")):
            continue
        for name in suite.backend_names:
            backend = backend_registry.load(name)
            reason = backend.unavailable_reason()
            for dtype in suite.dtypes:
                if reason is not None:
                    spec = ItemSpec(marker.args[0], case, name, "default", "cpu", dtype)
                    params.append(pytest.param(spec, id=spec.id, marks=pytest.mark.skip(reason=reason)))
                    continue
                # updates and accumulation run each framework's first variant: compilation is the gradients' concern
                variants = backend.variants if marker.kwargs.get("requires") in (None, "no_update", "expect") else backend.variants[:1]
                for variant in variants:
                    for device in backend.devices():
                        spec = ItemSpec(marker.args[0], case, name, variant, device, dtype)
                        params.append(pytest.param(spec, id=spec.id))
    metafunc.parametrize("conformance_item", params, indirect=True)


@pytest.fixture
def conformance_item(request: pytest.FixtureRequest) -> ConformanceItem:
    suite: SuiteConfig = request.config._conformance
    spec: ItemSpec = request.param
    item = ConformanceItem(spec, other_backends=[n for n in suite.backend_names if n != spec.backend],
                           known=[k for k in suite.known if k.applies_to(spec.property, spec.backend, spec.dtype, spec.case.id)])
    request.node._conformance_item = item
    return item


def _spec(item: pytest.Item) -> ItemSpec | None:
    spec = getattr(getattr(item, "callspec", None), "params", {}).get("conformance_item")
    return spec if isinstance(spec, ItemSpec) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seconds = config.getoption("item_timeout")
    if seconds <= 0:
        return
    for item in items:
        if _spec(item) is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's hook: a hung conformance item ends its process, since a hang inside native code cannot be
    interrupted; under xdist the controller then records it (see `_WorkerCrashes`). Other tests keep its methods."""
    if _spec(item) is None:
        return None
    timer = threading.Timer(settings.timeout, _end_hung_process, (item, settings.timeout))
    timer.daemon = True
    timer.start()
    item.cancel_timeout = timer.cancel  # what pytest-timeout's own cancel hook calls
    return True


def _end_hung_process(item: pytest.Item, seconds: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(item)
    print(f"\n{item.nodeid}: timed out after {seconds:g} s; its threads:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(sys.stderr, all_threads=True)
    os._exit(TIMED_OUT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    spec = _spec(item)
    if spec is None:
        return
    tested = getattr(item, "_conformance_item", None) or ConformanceItem(spec, other_backends=[])
    if report.when == "call" and report.passed and tested.known_matched is not None:
        # every failing example had a known failure's signature: an expected failure, not shrunk again
        report.outcome, report.wasxfail = "skipped", f"known: {tested.known_matched.reason}"
    if report.when == "setup" and report.passed:  # what the controller records if this item's worker dies
        started = replace(tested.record(report, call), outcome="error", message=None)
        report.user_properties.append((STARTED_KEY, json.dumps(clean(started.__dict__))))
    elif report.when == "call" or (report.when == "setup" and not report.passed):
        report.user_properties.append((RECORD_KEY, json.dumps(clean(tested.record(report, call).__dict__))))
