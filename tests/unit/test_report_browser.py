"""The report in a real browser: headless Chromium renders it, takes a screenshot, and has the matrix in its DOM.

Skipped where Chromium is not installed; the screenshot is kept under reports/test-output/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conformance import backends, observations
from conformance.backends.base import GradientRun
from conformance.cases import SHIPPED, load_case
from conformance.reference.gradients import exact_gradient
from conformance.report import write_report

SCREENSHOT = Path(__file__).resolve().parents[2] / "reports" / "test-output" / "report-screenshot.png"
RUN = {
    "schema": 1,
    "kind": "run",
    "python": "3.11.7",
    "platform": "Linux-6.1.0-x86_64-with-glibc2.36",
    "seed": "0",
    "frameworks": {"torch": "2.13.0", "tensorflow": "2.21.0", "jax": "0.10.2", "optax": "0.2.8"},
    "devices": {"torch": ["cpu"], "tensorflow": ["cpu"], "jax": ["cpu"]},
    "profile": "ci",
    "started": "2026-11-25T10:00:00Z",
    "git_commit": "abc123",
    "hostname": "ci-runner",
}
BACKENDS = (
    ("torch", ("eager", "compiled"), "2.13.0"),
    ("tensorflow", ("eager", "function"), "2.21.0"),
    ("jax", ("eager", "jit"), "0.10.2"),
)
SEED = [
    ("seed/linear-square", "y = 3x + 5, loss = (y - 10)^2"),
    ("seed/accumulate-sgd", "three batches, one SGD step"),
    ("seed/adam-one-step", "one Adam step, lr=0.1"),
]
KERAS_EPS = (
    "Keras adds epsilon to sqrt(v) and folds the bias correction into the step size; "
    "torch and optax add it to sqrt(v_hat)"
)
REPRO = "import torch\nw = torch.tensor([88.5, -3.0], requires_grad=True)\n...\n"


def record(*parts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A result record: defaults, then each part, then the fields."""
    base = {
        "schema": 1,
        "kind": "result",
        "case": "seed/linear-square",
        "property": "gradient.matches_reference",
        "backend": "torch",
        "variant": "eager",
        "device": "cpu",
        "dtype": "float32",
        "framework_version": "2.13.0",
        "outcome": "pass",
        "examples": 100,
        "elapsed_s": 0.41,
        "max_error": 1.2e-7,
        "tolerance": 2.4e-6,
    }
    for part in parts:
        base.update(part)
    return base | fields


def observed(run_id: str, backend: str, version: str, scale: float) -> dict[str, Any]:
    """A `gradient.at_probes` record of the shipped seed/linear-square case: the exact gradient at its probes,
    times `scale` (no framework needed)."""
    case = load_case(SHIPPED / "seed/linear-square.toml", SHIPPED)
    probes = observations.probe_inputs(case, "float32", 0)
    conventions = backends.load(backend).conventions  # what the merge holds a built-in backend to
    references = [exact_gradient(case, probe, conventions, "float32") for probe in probes]
    runs = []
    for probe, reference in zip(probes, references, strict=True):
        gradients = {name: (value * scale).astype("float32") for name, value in reference.gradients.items()}
        values = {name: probe[name] for name in gradients}
        runs.append(GradientRun(0.0, values, values, values, gradients, gradients))
    observation = observations.gradient_observation(case, 0, probes, runs, conventions)
    where = {"run_id": run_id, "backend": backend, "variant": "eager", "framework_version": version}
    return record(
        where,
        case=case.id,
        property="gradient.at_probes",
        observations=json.loads(json.dumps(observation, default=lambda value: value.tolist())),
    )


def chromium() -> str:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("chromium not found: apt-get install chromium")


def run_chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Headless, offline, with a throwaway profile: nothing but the file is loaded."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ]
    return subprocess.run([binary, *flags, *arguments], capture_output=True, text=True, timeout=120, check=False)


def small_results(tmp_path: Path) -> list[Path]:
    """Two runs, three backends: the seed cases, an Adam trajectory where Keras differs, and every outcome."""
    steps = list(range(11))
    reference = [2.0 - 0.0296 * s for s in steps]
    keras = [2.0 - 0.0004 * s for s in steps]
    adam = {"title": "Adam, 10 steps on 1e-9 * loss", "tags": ["optimizers", "adam"], "property": "update.trajectory"}
    sgd = {"title": "SGD momentum, dampening=0.5", "tags": ["optimizers"], "property": "update.one_step"}
    lse = {"case": "losses/logsumexp", "title": "logsumexp(w * a)", "tags": ["losses"]}
    torch_run = [RUN | {"run_id": "torch-1"}]
    other_run = [RUN | {"run_id": "tf-jax-1", "started": "2026-11-25T10:04:00Z"}]
    for backend, variants, version in BACKENDS:
        target = torch_run if backend == "torch" else other_run
        for variant in variants:
            for dtype in ("float32", "float64"):
                where = {
                    "run_id": target[0]["run_id"],
                    "backend": backend,
                    "variant": variant,
                    "dtype": dtype,
                    "framework_version": version,
                }
                for case, title in SEED:
                    for prop in ("gradient.matches_reference", "gradient.values_unchanged"):
                        target.append(record(where, case=case, title=title, tags=["seed"], property=prop))
                if backend == "tensorflow":
                    target.append(
                        record(
                            where,
                            adam,
                            case="optimizers/adam-tiny-loss",
                            outcome="divergent",
                            max_error=0.29,
                            tolerance=1e-6,
                            explanation=KERAS_EPS,
                            citation="https://keras.io/api/optimizers/adam/",
                            trajectory={
                                "steps": steps,
                                "reference": reference,
                                "actual": keras,
                                "error": [abs(a - r) for a, r in zip(keras, reference, strict=True)],
                            },
                        )
                    )
                    target.append(
                        record(
                            where,
                            sgd,
                            case="optimizers/sgd-dampening",
                            outcome="not_applicable",
                            message="Keras SGD has no dampening",
                            max_error=None,
                            tolerance=None,
                        )
                    )
                else:
                    target.append(
                        record(
                            where,
                            adam,
                            case="optimizers/adam-tiny-loss",
                            trajectory={
                                "steps": steps,
                                "reference": reference,
                                "actual": reference,
                                "error": [0.0] * 11,
                            },
                        )
                    )
                    target.append(record(where, sgd, case="optimizers/sgd-dampening"))
    torch_run.append(
        record(
            {"run_id": "torch-1", "backend": "torch", "variant": "compiled"},
            lse,
            outcome="fail",
            max_error=3.1e-3,
            counterexample={"w": [88.5, -3.0], "a": [1.0, 2.0]},
            repro=REPRO,
            message="gradient differs from the reference by 3.1e-3",
        )
    )
    other_run.append(
        record(
            {"run_id": "tf-jax-1", "backend": "jax", "variant": "jit", "framework_version": "0.10.2"},
            lse,
            outcome="error",
            max_error=None,
            message="XlaRuntimeError: INTERNAL: boom",
        )
    )
    other_run.append(
        record(
            {"run_id": "tf-jax-1", "backend": "tensorflow", "framework_version": "2.21.0"},
            lse,
            outcome="skip",
            max_error=None,
            message="the default profile runs it on float64 only",
        )
    )
    torch_run.append(observed("torch-1", "torch", "2.13.0", 1.0))  # compared with the other run after the fact
    other_run.append(observed("tf-jax-1", "tensorflow", "2.21.0", 1.0))
    other_run.append(observed("tf-jax-1", "jax", "0.10.2", 1.01))
    torch_file, other_file = tmp_path / "results-torch.jsonl", tmp_path / "results-tf-jax.jsonl"
    torch_file.write_text("".join(json.dumps(line) + "\n" for line in torch_run), encoding="utf-8")
    cut_off = '{"schema": 1, "ki'  # the run was killed while writing
    other_file.write_text("".join(json.dumps(line) + "\n" for line in other_run) + cut_off, encoding="utf-8")
    return [torch_file, other_file]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = chromium()
    page = tmp_path / "index.html"
    summary = write_report(small_results(tmp_path), page)
    assert len(summary.warnings) == 1  # the truncated last line
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    shot = run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={SCREENSHOT}", page.as_uri())
    assert SCREENSHOT.is_file(), shot.stderr[-2000:]
    assert SCREENSHOT.stat().st_size > 20_000  # a blank or error page compresses to a few KB
    dom = run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    matrix = dom.stdout.split('<table class="m">')[1].split("</table>")[0]
    cells = re.findall(r'<td class="[a-z_ ]+"><a href="#c\d+-\d+"', matrix)
    assert "seed/linear-square" in matrix and len(cells) == 5 * 12 + 3  # 5 cases on all 12 columns, one on 3
    assert dom.stdout.count("<svg") >= 2 and "Keras adds epsilon" in dom.stdout
    pairs = dom.stdout.split('<table class="d pairs">')[1].split("</table>")[0]
    assert "gradient.agrees_at_probes, float32" in pairs
    assert pairs.count('<td class="pass"') == 2 and pairs.count('<td class="fail"') == 4  # jax differs from both
