"""The HTML report: loading and merging result files, what the page shows, and that it stays safe and small."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from conformance.report import load_results, render_report, write_report
from conformance.report.cli import main_report

XSS_TITLE = "<script>alert(1)</script>"
XSS_TAG = '"><img src=x onerror=alert(1)>'
KERAS_ADAM = "https://keras.io/api/optimizers/adam/"
REPRO = "import torch\nx = torch.tensor(2.0, requires_grad=True)\nloss = (3 * x + 5 - 10) ** 2\nloss.backward()\n"


def header(run_id: str = "run-torch", **fields: Any) -> dict[str, Any]:
    return {
        "schema": 1,
        "kind": "run",
        "run_id": run_id,
        "python": "3.11.7",
        "platform": "Linux-6.1-x86_64",
        "frameworks": {"torch": "2.13.0", "tensorflow": "2.21.0", "jax": "0.10.2", "optax": "0.2.8"},
        "devices": {"torch": ["cpu"], "tensorflow": ["cpu"], "jax": ["cpu"]},
        "seed": "12345",
        "profile": "default",
        "started": "2026-11-25T10:00:00Z",
        "git_commit": "abc123",
        "hostname": "ci-runner-1",
        **fields,
    }


def result(case: str = "seed/linear-square", backend: str = "torch", outcome: str = "pass", **fields: Any) -> dict:
    """A result record as a runner writes it; `fields` override or add anything."""
    record = {
        "schema": 1,
        "kind": "result",
        "run_id": f"run-{backend}",
        "case": case,
        "title": "y = 3x + 5, loss = (y - 10)^2",
        "tags": ["seed", "scalar"],
        "property": "gradient.matches_reference",
        "backend": backend,
        "variant": "eager",
        "device": "cpu",
        "dtype": "float32",
        "framework_version": {"torch": "2.13.0", "jax": "0.10.2", "tensorflow": "2.21.0"}.get(backend, "1.0"),
        "outcome": outcome,
        "explanation": None,
        "citation": None,
        "examples": 100,
        "elapsed_s": 0.41,
        "max_error": 1.2e-7,
        "tolerance": 2.4e-6,
        "counterexample": None,
        "repro": None,
        "message": None,
        "trajectory": None,
    }
    record.update(fields)
    return record


def write_lines(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + tail, encoding="utf-8")
    return path


def synthetic(count: int) -> list[dict]:
    """A realistic mix: mostly passes, some explained differences, a few failures with a repro and trajectories."""
    backends = [("torch", "eager"), ("torch", "compiled"), ("tensorflow", "eager"), ("jax", "eager"), ("jax", "jit")]
    properties = ["gradient.matches_reference", "gradient.values_unchanged", "update.one_step", "update.trajectory"]
    records = []
    for index in range(count):
        backend, variant = backends[index % len(backends)]
        dtype = "float32" if (index // len(backends)) % 2 == 0 else "float64"
        prop = properties[(index // (2 * len(backends))) % len(properties)]
        case = f"losses/case-{index // (2 * len(backends) * len(properties)):03d}"
        outcome, extra = "pass", {}
        if index % 97 == 0:
            outcome, extra = "fail", {"counterexample": {"x": 2.0, "w": [1.0, 2.0]}, "repro": REPRO, "message": "off"}
        elif backend == "tensorflow" and prop.startswith("update") and index % 3 == 0:
            outcome, extra = "divergent", {"explanation": "Keras adds eps to sqrt(v)", "citation": KERAS_ADAM}
        elif backend == "tensorflow" and index % 29 == 0:
            outcome, extra = "not_applicable", {"message": "Keras has no dampening for SGD momentum"}
        if prop == "update.trajectory" and index % 7 == 0:
            steps = list(range(10))
            reference = [2 - 0.1 * step for step in steps]
            actual = [value + 1e-7 * step for step, value in zip(steps, reference, strict=True)]
            extra["trajectory"] = {"steps": steps, "reference": reference, "actual": actual, "error": [0.04] * 10}
        where = {"run_id": "run-torch", "variant": variant, "dtype": dtype, "property": prop, "tags": ["losses"]}
        records.append(result(case, backend, outcome, title=f"loss number {index // 40}", **where, **extra))
    return records


def test_two_files_merge_into_one_matrix_with_both_backends(tmp_path: Path) -> None:
    torch_file = write_lines(tmp_path / "results-torch.jsonl", [header("run-torch"), result(backend="torch")])
    jax_file = write_lines(tmp_path / "results-jax.jsonl", [header("run-jax"), result(backend="jax")])
    results = load_results([torch_file, jax_file])
    assert [run.run_id for run in results.runs] == ["run-torch", "run-jax"]
    assert {record.backend for record in results.records} == {"torch", "jax"}
    assert results.warnings == []
    page = render_report(results)
    matrix = page[page.index("<table class=m>") : page.index("</table>", page.index("<table class=m>"))]
    assert "torch 2.13.0" in matrix and "jax 0.10.2" in matrix
    assert matrix.count("✓ pass") == 2


def test_jobs_on_other_versions_get_their_own_columns_in_version_order(tmp_path: Path) -> None:
    new = write_lines(tmp_path / "new.jsonl", [header("new"), result(run_id="new", framework_version="2.13.0")])
    old = write_lines(tmp_path / "old.jsonl", [header("old"), result(run_id="old", framework_version="2.9.1")])
    page = render_report(load_results([new, old]))
    assert page.index("<th colspan=1 class=s>torch 2.9.1</th>") < page.index("<th colspan=1 class=s>torch 2.13.0</th>")


def test_truncated_last_line_warns_and_keeps_the_other_records(tmp_path: Path) -> None:
    lines = [header(), result(case="a/one"), result(case="a/two")]
    path = write_lines(tmp_path / "cut.jsonl", lines, tail='{"schema": 1, "kind": "result", "case": "a/thr')
    results = load_results([path])
    assert [record.case for record in results.records] == ["a/one", "a/two"]
    assert results.warnings == [f"{path}, line 4: truncated last line (the run was cut off?); ignored"]
    assert "truncated last line" in render_report(results)


def test_newer_schema_warns(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "new.jsonl", [header(), result(schema=2, new_field={"x": 1})])
    results = load_results([path])
    assert len(results.records) == 1
    assert any("schema 2" in warning and "newer" in warning for warning in results.warnings)


def test_non_json_line_warns_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(header()) + "\nthis is not json\n" + json.dumps(result()) + "\n", encoding="utf-8")
    results = load_results([path])
    assert len(results.records) == 1
    assert results.warnings == [f"{path}, line 2: not JSON; ignored"]


def test_identical_lines_of_one_run_count_once_but_other_duplicates_are_kept(tmp_path: Path) -> None:
    same = [header(), result(), result()]
    first = write_lines(tmp_path / "a.jsonl", same)
    second = write_lines(tmp_path / "b.jsonl", [header(), result()])
    results = load_results([first, second])
    assert len(results.records) == 2  # one from each file: another worker or job is another measurement
    assert any("repeats an earlier line" in warning for warning in results.warnings)


def test_records_that_cannot_be_used_are_named_never_dropped_silently(tmp_path: Path) -> None:
    broken = {"schema": 1, "kind": "result", "backend": "torch", "outcome": "pass"}
    path = write_lines(tmp_path / "r.jsonl", [header(), broken, result(outcome="exploded"), [1, 2], {"kind": "x"}])
    results = load_results([path])
    assert [record.outcome for record in results.records] == ["error"]
    text = "\n".join(results.warnings)
    for expected in ("without case, property", "unknown outcome 'exploded'", "not a JSON object", "unknown kind 'x'"):
        assert expected in text


def test_missing_title_tags_and_version_fall_back(tmp_path: Path) -> None:
    bare = result(case="user/my-loss")
    for name in ("title", "tags", "framework_version"):
        del bare[name]
    results = load_results([write_lines(tmp_path / "r.jsonl", [header(), bare])])
    record = results.records[0]
    assert (record.title, record.tags, record.framework_version) == ("user/my-loss", (), "2.13.0")
    assert "untagged" in render_report(results)


def test_record_text_is_escaped_everywhere(tmp_path: Path) -> None:
    hostile = result(
        case=XSS_TITLE,
        title=XSS_TITLE,
        tags=[XSS_TAG, XSS_TITLE],
        outcome="divergent",
        explanation=XSS_TAG,
        citation="javascript:alert(1)",
        property=XSS_TAG,
        variant=XSS_TAG,
        trajectory={"steps": [0, 1], "reference": [1, 2], "actual": [1, 2], "error": [0, 0]},
    )
    failing = result(outcome="fail", message=XSS_TITLE, repro=XSS_TITLE, counterexample={XSS_TAG: 1.0})
    path = write_lines(tmp_path / "x.jsonl", [header(hostile=XSS_TITLE), hostile, failing])
    page = render_report(load_results([path]))
    assert XSS_TITLE not in page and XSS_TAG not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page and 'href="javascript:' not in page


def test_nothing_is_loaded_from_the_network(tmp_path: Path) -> None:
    records = [header(), result(outcome="divergent", explanation="eps placement", citation=KERAS_ADAM)]
    page = render_report(load_results([write_lines(tmp_path / "r.jsonl", records)]))
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    assert not re.search(r"\ssrc\s*=", page)
    external = re.findall(r"""(?:href|src|xlink:href)\s*=\s*["']?(https?://[^"'\s>]+)""", page)
    assert external and set(external) == {KERAS_ADAM}  # the citation is the only address, and only a link
    assert all(match.startswith("<a ") for match in re.findall(r"<\w+[^>]*https?://", page))


def test_five_thousand_records_stay_under_two_megabytes(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "big.jsonl", [header(), *synthetic(5000)])
    summary = write_report([path], tmp_path / "out" / "index.html")
    assert summary.records == 5000 and summary.warnings == []
    assert summary.size_bytes == (tmp_path / "out" / "index.html").stat().st_size < 2_000_000
    assert summary.counts["fail"] > 0 and summary.counts["divergent"] > 0


def test_trajectory_is_drawn_as_inline_svg(tmp_path: Path) -> None:
    steps = [0, 1, 2, 3]
    trajectory = {"steps": steps, "reference": [2.0, 1.9, 1.8, 1.7], "actual": [2.0, 1.9, 1.8, 1.71]}
    trajectory["error"] = [0.0, 0.0, 0.0, 1.0]
    page = render_report(load_results([write_lines(tmp_path / "r.jsonl", [header(), result(trajectory=trajectory)])]))
    assert page.count("<svg") == 1
    for line in ("ref", "act", "err"):
        assert re.search(rf'<polyline class={line} points="(\d+,\d+ ){{3}}\d+,\d+"/>', page)


def test_identical_figures_are_drawn_once_and_reused(tmp_path: Path) -> None:
    trajectory = {"steps": [0, 1, 2], "reference": [2.0, 1.9, 1.8], "actual": [2.0, 1.9, 1.8], "error": [0, 0, 0]}
    records = [header(), result(trajectory=trajectory), result(backend="jax", trajectory=trajectory)]
    page = render_report(load_results([write_lines(tmp_path / "r.jsonl", records)]))
    assert page.count("<svg") == 2 and page.count("<polyline class=ref") == 1
    assert "<g id=fig0>" in page and '<use href="#fig0"/>' in page


@pytest.mark.parametrize(
    "trajectory",
    [
        {"reference": [2.0, 1.9, 1.8, 1.7], "actual": [2.0, math.nan, math.inf, 1.7], "error": [0, math.nan, "inf", 0]},
        {"steps": [0], "reference": [1.9], "actual": [1.9], "error": [0.0]},
        {"steps": [0, 1], "reference": [math.nan, math.nan], "actual": [None, "x"], "error": []},
        {"actual": [1e308, -1e308, 0.0]},
        {"actual": [5e-324, 5e-324], "error": [5e-324, 0.0]},
        {},
    ],
    ids=["nan-and-inf", "single-step", "nothing-finite", "huge-range", "subnormal", "empty"],
)
def test_odd_trajectories_do_not_crash(tmp_path: Path, trajectory: dict) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(header()) + "\n" + json.dumps(result(trajectory=trajectory)) + "\n", encoding="utf-8")
    page = render_report(load_results([path]))
    drawn = " ".join(re.findall(r"<svg.*?</svg>", page, re.S)).lower()
    assert "nan" not in drawn and "inf" not in drawn
    if "reference" in trajectory and len(trajectory["reference"]) == 4:
        assert "actual: NaN at step 1; +inf at step 2" in page and "error: NaN at step 1; +inf at step 2" in page


def test_page_shows_explanations_failures_and_reasons(tmp_path: Path) -> None:
    records = [
        header(),
        result(
            case="opt/adam",
            backend="tensorflow",
            outcome="divergent",
            max_error=0.29,
            tolerance=1e-6,
            explanation="Keras adds eps to sqrt(v)",
            citation="https://keras.io/api/optimizers/adam/",
        ),
        result(case="opt/adam", outcome="fail", counterexample={"x": 2.0}, repro=REPRO, message="off by 0.1%"),
        result(case="opt/sgd", backend="tensorflow", outcome="not_applicable", message="no dampening in Keras"),
        result(case="opt/sgd", backend="jax", outcome="error", message="Traceback: boom"),
    ]
    page = render_report(load_results([write_lines(tmp_path / "r.jsonl", records)]))
    known = page[page.index("id=known") : page.index("id=not-run")]
    assert "Keras adds eps to sqrt(v)" in known and 'href="https://keras.io/api/optimizers/adam/"' in known
    assert "0.29" in known and "2.9e5" in known
    assert "no dampening in Keras" in page[page.index("id=not-run") : page.index("id=details")]
    details = page[page.index("id=details") :]
    assert "x = torch.tensor(2.0, requires_grad=True)" in details and "{&#34;x&#34;: 2.0}" in details
    assert "Traceback: boom" in details
    assert re.search(r'<td class="error[^"]*"><a href="#c\d+-\d+"', page)


def test_non_finite_numbers_written_as_text_are_read_as_numbers(tmp_path: Path) -> None:
    """The results writer uses allow_nan=False and writes NaN and infinities as "nan" and "inf"."""
    records = [header(), result(case="a/nan", outcome="fail", max_error="nan"), result(case="a/inf", max_error="inf")]
    results = load_results([write_lines(tmp_path / "r.jsonl", records)])
    assert math.isnan(results.records[0].ratio) and math.isinf(results.records[1].ratio)
    matrix = render_report(results).split("<table class=m>")[1].split("</table>")[0]
    assert "<i>NaN</i>" in matrix and "<i>∞</i>" in matrix


def test_cli_writes_the_report_and_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path / "r.jsonl", [header(), result()], tail="{broken")
    output = tmp_path / "reports" / "index.html"
    assert main_report([str(path), "-o", str(output)]) == 0
    captured = capsys.readouterr()
    assert output.is_file() and "1 result (1 pass)" in captured.out
    assert captured.err.count("\n") == 1 and captured.err.startswith("warning: ")


def test_cli_missing_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_report([str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "x.html")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such file" in error and "Traceback" not in error
    assert not (tmp_path / "x.html").exists()


def test_sensitivity_and_discarded_examples_are_shown_and_escaped(tmp_path: Path) -> None:
    records = [
        header(),
        result(sensitivity=2.5e-4, discarded={"a step's state would be <subnormal>": 3}, examples=7),
        result(case="seed/adam-step", property="differentiation.values_unchanged", sensitivity=0.0),
    ]
    page = render_report(load_results([write_lines(tmp_path / "r.jsonl", records)]))
    assert "≥ 0.00025" in page
    assert (
        "(+3 discarded)" in page and "Discarded: 3 examples where a step&#39;s state would be &lt;subnormal&gt;" in page
    )
    assert "any change" in page and "<subnormal>" not in page
