"""The pytest plugin: options, parametrization over case x backend x variant x device x dtype, one results record
per item, written by the controlling process (xdist workers send theirs along), and xdist work units by case.

It is loaded in every pytest session of an environment where the package is installed, so it stays inert unless
the session collects the suite's property tests or is given one of its options: unrelated projects see no case
loading, no profile change (the suite's Hypothesis profiles have names of their own, see `profiles`), no handler.

A framework that crashes or hangs ends only its xdist worker: each item's setup report carries the record it
will have if its worker dies, and the controller writes it as an `error` that says how the worker ended.
"""

from __future__ import annotations

import datetime
import faulthandler
import functools
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

from conformance import backends as backend_registry
from conformance import faults, known_failures, observations, profiles
from conformance.cases import SHIPPED, Case, CaseError, load_cases
from conformance.item import ConformanceItem, ItemSpec
from conformance.results import ResultRecord, ResultsWriter, clean, new_run_id, now, run_header

SHIPPED_CASES = SHIPPED
DTYPES = ("float32", "float64")
RECORD_KEY = "conformance_record"
STARTED_KEY = "conformance_record_if_crashed"
TIMED_OUT = 124  # the exit status of a worker that ended a hung item, as timeout(1) uses it
SUITE_OPTIONS = ("backend", "cases", "dtype", "results")  # any of them makes a session the suite's


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "gradient and optimizer conformance")
    group.addoption(
        "--backend",
        action="append",
        default=[],
        metavar="NAME",
        help="a backend to run (repeatable; default: every known backend, missing ones skip)",
    )
    group.addoption(
        "--cases",
        action="append",
        default=[],
        metavar="PATH",
        help="a case file or directory (repeatable; default: the shipped cases, which 'shipped' names)",
    )
    group.addoption("--dtype", action="append", default=[], choices=DTYPES, help="dtypes to run (default: both)")
    group.addoption("--results", metavar="FILE", help="write JSON Lines results to FILE")
    group.addoption(
        "--item-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a conformance item running longer ends its process (an xdist worker, which is replaced) "
        "and is an error (default 300; 0: none)",
    )


@dataclass
class SuiteConfig:
    cases: list[Case]
    backend_names: list[str]
    dtypes: list[str]
    known: list[known_failures.KnownFailure]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(property, requires=None): a property test of the suite")
    if not hasattr(config, "workerinput"):  # acts only on items that announce themselves as the suite's
        config.pluginmanager.register(_WorkerCrashes(config.getoption("item_timeout")), "conformance-worker-crashes")
    if any(config.getoption(name) for name in SUITE_OPTIONS):  # else on collecting a property test, if ever
        _start(config)


def _start(config: pytest.Config) -> SuiteConfig:
    """The session is the suite's: read its cases, backends and known failures (a problem is a usage error, in
    one line), plant a fault if `conformance mutate` asks for one, and open the results file."""
    if getattr(config, "_conformance", None) is not None:
        return config._conformance
    try:
        faults.plant_from_environment()  # `conformance mutate` runs the suite against a planted fault
    except ValueError as error:
        raise pytest.UsageError(f"{faults.FAULT_ENVIRONMENT}: {error}") from None
    try:
        suite = SuiteConfig(
            cases=load_cases(
                [
                    SHIPPED_CASES if path == "shipped" else Path(path)
                    for path in config.getoption("cases") or ["shipped"]
                ]
            ),
            backend_names=config.getoption("backend") or backend_registry.known_names(),
            dtypes=config.getoption("dtype") or list(DTYPES),
            known=[],
        )
        known = backend_registry.known_names()
    except (CaseError, backend_registry.UnknownBackend) as error:
        raise pytest.UsageError(str(error)) from None
    unknown = set(suite.backend_names) - set(known)
    if unknown:
        raise pytest.UsageError(f"--backend: unknown backend {sorted(unknown)[0]!r} (known: {', '.join(known)})")
    try:
        suite.known = known_failures.collect([backend_registry.load(name) for name in suite.backend_names])
    except (known_failures.KnownFailureError, backend_registry.UnknownBackend) as error:
        raise pytest.UsageError(str(error)) from None
    config._conformance = suite
    _interrupt_on_sigterm(config)
    results = config.getoption("results")
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(
            _ResultsFile(ResultsWriter(Path(results), functools.partial(_header, suite, config, now()))),
            "conformance-results",
        )
    return suite


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
        if crashitem not in self.running:  # not one of the suite's items: left as xdist reports it
            return
        message = self._how_it_ended(getattr(report, "node", None))
        report.longrepr = f"{crashitem}: {message}"
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


def _header(suite: SuiteConfig, config: pytest.Config, started: datetime.datetime) -> dict:
    frameworks, devices = {}, {}
    for name in suite.backend_names:
        backend = backend_registry.load(name)
        if backend.unavailable_reason() is None:
            frameworks.update(backend_registry.versions(backend))
            devices[name] = backend.devices()
    seed = config.getoption("hypothesis_seed", default=None)
    seed = None if seed is None else str(seed)
    header = run_header(new_run_id(), frameworks, devices, seed, profiles.chosen_name(), started)
    return {**header, "probe_seed": observations.probe_seed(seed)}


def _selected(case: Case, requires: str | None) -> bool:
    return {
        None: True,
        "update": case.update is not None,
        "no_update": case.update is None,
        "accumulate": case.micro_batches is not None,
        "expect": bool(case.expect) and case.update is None,
        "expect_update": bool(case.expect) and case.update is not None,
    }[requires]


def _variants(backend, marker: pytest.Mark) -> tuple[str, ...]:
    """Gradient items run every variant; update items every variant of the training step (torch's optimizer
    implementations), comparisons with other backends only its first (the merge compares the others at the
    probes); accumulation items the first variant."""
    requires = marker.kwargs.get("requires")
    if requires in (None, "no_update", "expect"):
        return backend.variants
    if requires in ("update", "expect_update"):
        variants = backend.training_step_variants()
        return variants[:1] if marker.kwargs.get("first_variant_only") else variants
    return backend.variants[:1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_item" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("conformance")
    suite = _start(metafunc.config)
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
                for variant in _variants(backend, marker):
                    for device in backend.devices():
                        spec = ItemSpec(marker.args[0], case, name, variant, device, dtype)
                        params.append(pytest.param(spec, id=spec.id))
    metafunc.parametrize("conformance_item", params, indirect=True)


@pytest.fixture
def conformance_item(request: pytest.FixtureRequest) -> ConformanceItem:
    suite: SuiteConfig = request.config._conformance
    spec: ItemSpec = request.param
    item = ConformanceItem(
        spec,
        other_backends=[n for n in suite.backend_names if n != spec.backend],
        known=[
            k
            for k in suite.known
            if k.applies_to(spec.property, spec.backend, spec.dtype, spec.case.id, spec.variant, spec.device)
        ],
        probe_seed=observations.probe_seed(request.config.getoption("hypothesis_seed", default=None)),
    )
    request.node._conformance_item = item
    return item


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under --dist=loadgroup (the repository's default, and `conformance run`'s), the items of one case go to one
    xdist worker, so that its reference is derived and its functions compiled once in the run, not once per worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByCase(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:  # an xdist_group mark, as LoadGroupScheduling reads it
                return nodeid.rsplit("@", 1)[-1]
            return _case_of(nodeid) or nodeid

        def _reschedule(self, node) -> None:
            """At least two items pending on a worker, or its shutdown: a worker runs an item only once it knows the
            next one (LoadScopeScheduling gives a replaced worker one unit, which may be a single item, and waits)."""
            super()._reschedule(node)
            while self.workqueue and not node.shutting_down and self._pending_of(self.assigned_work[node]) < 2:
                self._assign_work_unit(node)
            if not self.workqueue and not node.shutting_down:
                node.shutdown()

        def remove_node(self, node):
            """As LoadScopeScheduling's, except that the item running when the worker died counts as run (its crash
            is its result): the rest of its case goes on elsewhere, instead of the crash repeating."""
            workload = self.assigned_work.pop(node)
            pending = [(scope, nodeid) for scope, unit in workload.items() for nodeid, done in unit.items() if not done]
            if not pending:
                return None
            scope, crashed = pending[0]
            workload[scope][crashed] = True
            self.workqueue.update({scope: unit for scope, unit in workload.items() if not all(unit.values())})
            for other in self.assigned_work:
                self._reschedule(other)
            return crashed

    return ByCase(config, log)


def _case_of(nodeid: str) -> str | None:
    """The case of an item's node id, `...::test_x[<case>-<backend>-<variant>-<device>-<dtype>]` (ItemSpec.id)."""
    name, _, parameters = nodeid.partition("[")
    parts = parameters.removesuffix("]").rsplit("-", 4)
    return parts[0] if len(parts) == 5 and parts[4] in DTYPES else None


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
