"""The compiled reference kept on disk gives, bit for bit, what compiling it anew gives, and never a stale one."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import caches, expressions
from conformance.cases import load_case
from conformance.reference import cache
from conformance.reference.conventions import KinkConventions
from conformance.reference.gradients import CompiledGradient

SHIPPED = Path(__file__).parents[2] / "conformance" / "shipped_cases" / "losses"
# together they use every function, operator and convention of the expression language
CASES = ["kitchen-sink", "exp-log", "maximum-minimum", "relu-kink", "sqrt-norm", "rational", "softplus-saturation"]
CONVENTIONS = [KinkConventions(), KinkConventions(1.0, 1.0, 0.0, 20.0), KinkConventions(-1.0, 0.0, 1.0, 14.0)]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(caches.ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache" / "reference"


def evaluations(compiled: CompiledGradient, seed: int = 0) -> list[np.ndarray]:
    """The loss, gradients and bounds at drawn points, kinks and ties included, under several conventions."""
    rng, results = np.random.default_rng(seed), []
    for point in range(6):
        inputs = {}
        for spec in compiled.case.tensors:
            if spec.value is not None:
                inputs[spec.name] = spec.value
            elif point == 0:  # the point nearest zero in range: where kinks and ties sit
                inputs[spec.name] = np.full(spec.shape, min(max(0.0, spec.range[0]), spec.range[1]))
            else:
                inputs[spec.name] = rng.uniform(*spec.range, size=spec.shape)
        for conventions in CONVENTIONS:
            for dtype in ("float32", "float64"):
                result = compiled(inputs, conventions, dtype)
                results += [np.asarray(result.loss), *result.gradients.values(), *result.bounds.values()]
    return results


@pytest.mark.parametrize("name", CASES)
def test_a_kept_reference_computes_what_a_fresh_compilation_computes(name, cache_dir):
    case = load_case(SHIPPED / f"{name}.toml")
    fresh = CompiledGradient(case)
    assert list(cache_dir.glob("*.reference")), "the compilation was not kept"
    kept = cache.load(case)
    assert kept is not None and kept[0] is not fresh._evaluate
    from_disk = CompiledGradient(case)
    assert from_disk._evaluate is not fresh._evaluate  # read back, not the same function
    for mine, theirs in zip(evaluations(fresh), evaluations(from_disk), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_the_key_changes_with_anything_the_generated_code_depends_on(cache_dir):
    case = load_case(SHIPPED / "rational.toml")
    keys = {cache.key(case)}
    other_loss = expressions.parse("sum(w / (2 + square(w)))", {"w"})
    keys.add(cache.key(dataclasses.replace(case, loss=other_loss)))
    (variable,) = case.variables
    keys.add(cache.key(dataclasses.replace(case, variables=(dataclasses.replace(variable, shape=(7,)),))))
    keys.add(cache.key(dataclasses.replace(case, variables=(dataclasses.replace(variable, name="v"),))))
    assert len(keys) == 4
    # the title, tags and ranges do not enter the generated code
    assert cache.key(dataclasses.replace(case, title="another")) == cache.key(case)


def test_an_unreadable_or_foreign_entry_is_compiled_anew(cache_dir):
    case = load_case(SHIPPED / "exp-log.toml")
    expected = evaluations(CompiledGradient(case))
    (entry,) = cache_dir.glob("*.reference")
    for garbage in (b"", b"\x00not marshal", entry.read_bytes()[:40]):
        entry.write_bytes(garbage)
        assert cache.load(case) is None
        for mine, theirs in zip(evaluations(CompiledGradient(case)), expected, strict=True):
            np.testing.assert_array_equal(mine, theirs)
    # an entry that names a global from nowhere this module resolves is not used
    import marshal

    _, code, origins, literals = marshal.loads(entry.read_bytes())
    entry.write_bytes(marshal.dumps((cache.FORMAT, code, {**origins, "exp": ("os", "system")}, literals)))
    assert cache.load(case) is None


def test_the_derivation_is_the_one_imported_and_a_shared_directory_is_not_read(cache_dir, monkeypatch):
    case = load_case(SHIPPED / "exp-log.toml")
    before = cache.key(case)
    # the digest was taken at import: the files read again now (edited, say) lend no key to the code running
    monkeypatch.setattr(Path, "read_bytes", lambda self: b"edited since")
    assert cache.key(case) == before
    monkeypatch.undo()
    monkeypatch.setenv(caches.ENVIRONMENT_VARIABLE, str(cache_dir.parent))
    CompiledGradient(case)
    assert cache.load(case) is not None
    cache_dir.chmod(0o777)  # anyone may write code there: it is not run
    assert cache.load(case) is None


def test_off_keeps_nothing_and_a_read_only_directory_is_no_error(tmp_path, monkeypatch):
    case = load_case(SHIPPED / "relu-kink.toml")
    monkeypatch.setenv(caches.ENVIRONMENT_VARIABLE, "off")
    assert caches.directory() is None
    CompiledGradient(case)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    monkeypatch.setenv(caches.ENVIRONMENT_VARIABLE, str(read_only / "cache"))
    try:
        evaluations(CompiledGradient(case))
        if os.geteuid() != 0:  # root writes anywhere
            assert not (read_only / "cache").exists()
    finally:
        read_only.chmod(0o700)


JAX_GRADIENTS = """
import pathlib, sys
import numpy as np
from conformance.backends.jax import JaxBackend
from conformance.cases import load_case
case = load_case(pathlib.Path(sys.argv[1]))
backend = JaxBackend()
inputs = {spec.name: np.full(spec.shape, 0.5, np.float32) for spec in case.tensors}
run = backend.gradients(case, inputs, "float32", "eager", "cpu")
print(backend.jax.config.jax_compilation_cache_dir, run.gradients["w"].tolist())
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.parametrize("setting", ["dir", "off", "the user's"])
def test_jax_keeps_its_compilations_in_the_suite_cache_unless_told_otherwise(setting, tmp_path):
    environment = {**os.environ, caches.ENVIRONMENT_VARIABLE: str(tmp_path / "suite")}
    if setting == "off":
        environment[caches.ENVIRONMENT_VARIABLE] = "off"
    if setting == "the user's":
        environment["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "theirs")
    runs = [
        subprocess.run(
            [sys.executable, "-c", JAX_GRADIENTS, str(SHIPPED / "rational.toml")],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split(" ", 1)
        for _ in range(2)
    ]
    assert runs[0][1] == runs[1][1]  # the second run's gradients, from kept compilations, are the first's
    chosen = {"dir": str(tmp_path / "suite" / "xla"), "off": "None", "the user's": str(tmp_path / "theirs")}[setting]
    assert runs[0][0] == chosen
    assert any((tmp_path / "suite" / "xla").glob("*")) == (setting == "dir")
