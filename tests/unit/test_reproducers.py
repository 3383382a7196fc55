"""Each adapter describes every function twice, as calls (its target class) and as source text (its reproducer):
the reproducer, run alone in a fresh interpreter, must print exactly the gradients the adapter computed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from conformance import backends
from conformance.backends.base import repro_of
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES

# every function of the expression language, kinks, data tensors, broadcasting and an unused variable among them
CASES = [
    "losses/kitchen-sink",
    "losses/linear-regression",
    "losses/softmax-cross-entropy",
    "losses/unused-variable",
    "losses/maximum-minimum",
    "losses/logsumexp-axis0",
]
# the reproducers differentiate op by op, but Keras on jax's, which is jitted as the adapter's differentiation is,
# and torch's for `compile`, which compiles the loss as the adapter does
VARIANTS = [
    ("torch", "eager"),
    ("torch", "compile"),
    ("tensorflow", "eager"),
    ("jax", "eager"),
    ("keras-jax", "jit"),
    ("keras-torch", "eager"),
]


# runs each script as `python script.py` would, one fresh interpreter for all of them (importing a framework is slow)
RUNNER = """
import runpy, sys
for path in sys.argv[1:]:
    print("=== " + path, flush=True)
    runpy.run_path(path, run_name="__main__")
"""


def printed_gradients(scripts: list[str], directory, path: str = "") -> list[dict[str, object]]:
    """What the scripts print, run with nothing on PATH but `path` (inductor calls a C++ compiler)."""
    paths = []
    for index, script in enumerate(scripts):
        paths.append(directory / f"repro_{index}.py")
        paths[-1].write_text(script, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": path},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    printed: list[dict[str, object]] = []
    for line in completed.stdout.splitlines():
        if line.startswith("=== "):
            printed.append({})
        elif line.startswith("grad "):
            _, name, value = line.split(" ", 2)
            printed[-1][name] = ast.literal_eval(value)
    return printed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_reproducer_prints_the_adapters_gradients(name, variant, dtype, tmp_path):
    backend = backends.load(name)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    if name.startswith("keras-") and dtype == "float64":
        pytest.skip("not applicable: Keras 3 on jax and torch computes float64 in float32 (keras_engines.py)")
    rng = np.random.default_rng(7)
    runs, scripts = {}, []
    for case_id in CASES:
        case = load_case(SHIPPED_CASES / f"{case_id}.toml", SHIPPED_CASES)
        inputs = {
            spec.name: spec.value.astype(dtype)
            if spec.value is not None
            else rng.uniform(*spec.range, spec.shape).astype(dtype)
            for spec in case.tensors
        }
        inputs[case.variables[0].name].flat[0] = 0.0  # a kink or tie where the case has one
        runs[case_id] = backend.gradients(case, inputs, dtype, variant, "cpu")
        scripts.append(repro_of(backend, case, inputs, dtype, variant))
    path = os.environ.get("PATH", "") if variant == "compile" else ""
    for (case_id, run), printed in zip(runs.items(), printed_gradients(scripts, tmp_path, path), strict=True):
        assert set(printed) == set(run.gradients), case_id
        for variable, gradient in run.gradients.items():
            if gradient is None:
                assert printed[variable] is None, (case_id, variable)
            else:
                np.testing.assert_array_equal(
                    np.asarray(printed[variable], dtype), gradient, err_msg=f"{case_id}: {variable}"
                )
