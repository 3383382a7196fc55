"""The pytest plugin: options, Hypothesis profiles, parametrization over case x backend x variant x device x dtype,
and one results record per item, written by the controlling process (xdist workers send theirs along)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from conformance import backends as backend_registry
from conformance.cases import Case, CaseError, load_cases
from conformance.item import ConformanceItem, ItemSpec
from conformance.known_failures import known_failure
from conformance.results import ResultRecord, ResultsWriter, clean, new_run_id, run_header

SHIPPED_CASES = Path(__file__).resolve().parent.parent / "cases"
DTYPES = ("float32", "float64")
RECORD_KEY = "conformance_record"

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
    group.addoption("--results", metavar="FILE", help="write JSON Lines results to FILE")  # fmt: skip


@dataclass
class SuiteConfig:
    cases: list[Case]
    backend_names: list[str]
    dtypes: list[str]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(property, requires=None): a property test of the suite")
    try:
        config._conformance = SuiteConfig(
            cases=load_cases([SHIPPED_CASES if path == "shipped" else Path(path)
                              for path in config.getoption("cases") or ["shipped"]]),
            backend_names=config.getoption("backend") or backend_registry.known_names(),
            dtypes=config.getoption("dtype") or list(DTYPES),
        )  # fmt: skip
    except CaseError as error:
        raise pytest.UsageError(str(error)) from None
    unknown = set(config._conformance.backend_names) - set(backend_registry.known_names())
    if unknown:
        raise pytest.UsageError(f"--backend: unknown backend {sorted(unknown)[0]!r} "
                                f"(known: {', '.join(backend_registry.known_names())})")  # fmt: skip
    results = config.getoption("results")
    if results and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_ResultsFile(ResultsWriter(Path(results), _header(config))), "conformance-results")


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
                        known = known_failure(spec.property, name, dtype)
                        marks = [pytest.mark.xfail(reason=f"known: {known}")] if known else []
                        params.append(pytest.param(spec, id=spec.id, marks=marks))
    metafunc.parametrize("conformance_item", params, indirect=True)


@pytest.fixture
def conformance_item(request: pytest.FixtureRequest) -> ConformanceItem:
    suite: SuiteConfig = request.config._conformance
    item = ConformanceItem(request.param, other_backends=[n for n in suite.backend_names if n != request.param.backend])
    request.node._conformance_item = item
    return item


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    spec = getattr(getattr(item, "callspec", None), "params", {}).get("conformance_item")
    if not isinstance(spec, ItemSpec) or not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    tested: ConformanceItem | None = getattr(item, "_conformance_item", None)
    record = (tested or ConformanceItem(spec, other_backends=[])).record(report, call)
    report.user_properties.append((RECORD_KEY, json.dumps(clean(record.__dict__))))
