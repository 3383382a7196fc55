"""Comparison after the fact (`conformance report` over files of runs made apart): the same verdicts as one run
with every backend, a planted fault found from the files alone, and files that cannot be compared said so."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import numpy as np
import pytest

from conformance import backends, faults, observations
from conformance.cases import load_case
from conformance.pytest_plugin import SHIPPED_CASES
from conformance.report import cross_run, load_results
from conformance.report.cli import main_report
from conformance.report.pairwise import axis_views
from conformance.results import SCHEMA, ResultRecord

CASES = ["losses/maximum-minimum", "losses/tanh-layer", "losses/unused-variable", "losses/kitchen-sink"]
COLUMNS = [("torch", "eager"), ("jax", "jit"), ("jax", "eager")]
UPDATE_CASES = ["seed/adam-step", "optimizers/adam-small-gradients", "optimizers/sgd-nesterov"]
UPDATE_COLUMNS = [("torch", "for-loop"), ("tensorflow", "eager"), ("jax", "jit")]


@functools.cache
def shipped(case_id: str):
    return load_case(SHIPPED_CASES / f"{case_id}.toml", SHIPPED_CASES)


def observed(name: str, variant: str, case_id: str, dtype: str, seed: int = 0) -> ResultRecord:
    """The record `gradient.at_probes` writes, made here without pytest."""
    backend, case = backends.load(name), shipped(case_id)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    probes = observations.probe_inputs(case, dtype, seed)
    runs = [backend.gradients(case, probe, dtype, variant, "cpu") for probe in probes]
    observation = observations.gradient_observation(case, seed, probes, runs, backend.conventions)
    return ResultRecord(
        case_id, "gradient.at_probes", name, variant, "cpu", dtype, "1.0", "pass", observations=observation
    )


def observed_update(name: str, variant: str, case_id: str, dtype: str, seed: int = 0) -> ResultRecord:
    """The record `update.at_probes` writes, made here without pytest."""
    backend, case = backends.load(name), shipped(case_id)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    probes = observations.probe_inputs(case, dtype, seed)
    hypers = observations.probe_hyperparameters(case, dtype, seed)
    runs = [
        backend.updates(case, probe, hyper, dtype, variant, "cpu") for probe, hyper in zip(probes, hypers, strict=True)
    ]
    observation = observations.update_observation(
        case, seed, probes, hypers, runs, backend.conventions, backend.decay_rates_in_dtype("cpu", variant)
    )
    return ResultRecord(
        case_id, "update.at_probes", name, variant, "cpu", dtype, "1.0", "pass", observations=observation
    )


def ALL_CASES() -> list:  # noqa: N802 - a constant, made when first needed
    return [shipped(case_id) for case_id in CASES + UPDATE_CASES + ACCUMULATION_CASES]


def write_run(path, run_id: str, records: list[ResultRecord]):
    lines = [json.dumps({"schema": SCHEMA, "kind": "run", "run_id": run_id, "frameworks": {}, "probe_seed": 0})]
    lines += [record.to_json(run_id) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def verdicts(paths) -> dict[tuple, tuple]:
    compared = cross_run.compare_observations(load_results(paths).records, ALL_CASES())
    return {(r.property, r.case, r.backend, r.variant, r.dtype): (r.outcome, r.explanation is None) for r in compared}


@pytest.fixture(scope="module")
def healthy() -> list[ResultRecord]:
    return [
        observed(name, variant, case_id, dtype)
        for case_id in CASES
        for dtype in ("float32", "float64")
        for name, variant in COLUMNS
    ]


@pytest.fixture(scope="module")
def healthy_updates() -> list[ResultRecord]:
    return [
        observed_update(name, variant, case_id, dtype)
        for case_id in UPDATE_CASES
        for dtype in ("float32", "float64")
        for name, variant in UPDATE_COLUMNS
    ]


def test_runs_made_apart_compare_as_one_run_with_every_backend(healthy, tmp_path):
    alone = [
        write_run(tmp_path / f"{name}.jsonl", f"run-{name}", [r for r in healthy if r.backend == name])
        for name in ("torch", "jax")
    ]
    together = write_run(tmp_path / "both.jsonl", "run-both", healthy)
    apart, one = verdicts(alone), verdicts([together])
    assert apart == one
    assert len(one) == len(healthy)
    outcomes = {outcome for outcome, _ in one.values()}
    assert "pass" in outcomes and "divergent" in outcomes  # the probe at zero meets maximum's tie and abs' kink
    assert "fail" not in outcomes


def test_update_runs_made_apart_compare_as_one_run(healthy_updates, tmp_path):
    alone = [
        write_run(tmp_path / f"{name}.jsonl", f"run-{name}", [r for r in healthy_updates if r.backend == name])
        for name, _ in UPDATE_COLUMNS
    ]
    one = verdicts([write_run(tmp_path / "all.jsonl", "run-all", healthy_updates)])
    assert verdicts(alone) == one and len(one) == len(healthy_updates)
    assert one[("update.agrees_at_probes", "optimizers/adam-small-gradients", "tensorflow", "eager", "float32")] == (
        "divergent",
        False,
    )  # Keras adds epsilon to sqrt(v): explained from the files
    assert "fail" not in {outcome for outcome, _ in one.values()}


def test_a_planted_adam_fault_is_an_unexplained_difference_across_runs(healthy_updates, planted, tmp_path):
    faults.torch_uncorrected_adam(planted)
    broken = [observed_update("torch", "for-loop", "seed/adam-step", dtype) for dtype in ("float32", "float64")]
    planted.undo()
    jax = [r for r in healthy_updates if r.backend == "jax"]
    files = [write_run(tmp_path / "torch.jsonl", "t", broken), write_run(tmp_path / "jax.jsonl", "j", jax)]
    assert main_report([*map(str, files), "-o", str(tmp_path / "index.html")]) == 1
    found = verdicts(files)
    assert found[("update.agrees_at_probes", "seed/adam-step", "torch", "for-loop", "float32")] == ("fail", True)
    assert found[("update.agrees_at_probes", "seed/adam-step", "jax", "jit", "float64")] == ("fail", True)


def test_a_comparison_needs_the_case_file_it_observed(healthy, healthy_updates, tmp_path):
    path = write_run(tmp_path / "all.jsonl", "run", [r for r in healthy + healthy_updates if r.dtype == "float32"])
    compared = cross_run.compare_observations(load_results([path]).records, cases=[])
    assert compared and all(r.outcome == "not_applicable" for r in compared)
    assert all("no case file here has digest" in r.message for r in compared)


def test_a_planted_fault_is_found_from_the_files_alone(healthy, planted, tmp_path):
    torch_files = [r for r in healthy if r.backend == "torch"]
    faults.torch_scaled_gradients(planted)
    broken = [observed("torch", "eager", r.case, r.dtype) for r in torch_files]
    planted.undo()
    jax_file = write_run(tmp_path / "jax.jsonl", "run-jax", [r for r in healthy if r.backend == "jax"])
    torch_file = write_run(tmp_path / "torch.jsonl", "run-torch", broken)
    merged = tmp_path / "merged.jsonl"
    code = main_report([str(torch_file), str(jax_file), "-o", str(tmp_path / "index.html"), "--results", str(merged)])
    assert code == 1
    compared = [r for r in load_results([merged]).records if r.property == "gradient.agrees_at_probes"]
    failed = [r for r in compared if r.outcome == "fail"]
    assert {r.backend for r in failed} >= {"torch"} and all("against" in r.message for r in failed)
    assert all(r.counterexample for r in failed)
    # the merged file merges again to the same verdicts, its comparisons made anew, not doubled
    assert verdicts([merged]) == verdicts([torch_file, jax_file])
    assert len(compared) == len(cross_run.compare_observations(load_results([torch_file, jax_file]).records))


def test_other_case_files_other_probes_and_malformed_observations_are_not_comparable(healthy, tmp_path):
    mine = next(r for r in healthy if r.backend == "torch" and r.case == "losses/tanh-layer" and r.dtype == "float32")
    theirs = next(r for r in healthy if r.backend == "jax" and r.case == mine.case and r.variant == "jit")
    reseeded = observed("jax", "eager", mine.case, "float32", seed=5)
    edited = replace(theirs, backend="a", observations={**theirs.observations, "case_digest": "0123456789abcdef"})
    broken = replace(theirs, backend="b", observations={**theirs.observations, "probes": [{"inputs": 1}]})
    path = write_run(tmp_path / "mixed.jsonl", "run", [mine, reseeded, edited, broken])
    compared = {
        r.backend + r.variant: r for r in cross_run.compare_observations(load_results([path]).records, ALL_CASES())
    }
    torch = compared["torcheager"]
    assert torch.outcome == "not_applicable" and torch.examples == 0
    assert "other probe inputs (probe seed 0 vs 5)" in torch.message
    assert "no case file here has digest 0123456789abcdef" in torch.message
    assert "malformed gradient observation" in torch.message


def _hostile(record: ResultRecord, **changes) -> ResultRecord:
    """The record with its observation edited: each probe's entries changed by `changes` (functions of the entry)."""
    observation = json.loads(json.dumps(record.observations, default=lambda value: value.tolist()))
    for entry in observation["probes"]:
        for key, change in changes.items():
            entry[key] = change(entry)
    return replace(record, observations=observation)


def _scaled(values: dict, factor: float) -> dict:
    return {name: None if value is None else (np.asarray(value) * factor).tolist() for name, value in values.items()}


def test_a_file_cannot_bring_its_own_reference_bounds_conventions_or_probes(healthy, tmp_path):
    """The merge derives the reference and bounds again from the case file and checks the probes against the seed:
    a file whose gradients are off passes neither with a reference and bounds of its own, nor with conventions
    outside the admissible range, nor with inputs of its own choosing, nor in another dtype."""
    mine = next(r for r in healthy if r.backend == "torch" and r.case == "losses/tanh-layer" and r.dtype == "float64")
    theirs = next(r for r in healthy if r.backend == "jax" and r.case == mine.case and r.dtype == "float64")
    off = _hostile(
        theirs,
        gradients=lambda entry: _scaled(entry["gradients"], 1.5),
        reference=lambda entry: _scaled(entry["gradients"], 1.5),
        bounds=lambda entry: {name: 1e300 for name in entry["gradients"]},
    )
    loose = replace(
        off,
        variant="loose",
        observations={**off.observations, "conventions": {**off.observations["conventions"], "abs_slope_at_zero": 7.0}},
    )
    moved = replace(_hostile(theirs, inputs=lambda entry: _scaled(entry["inputs"], 0.5)), variant="moved")
    conventions = {**theirs.observations["conventions"], "abs_slope_at_zero": 0.5}  # admissible, not jax's
    claimed = replace(theirs, variant="claimed", observations={**theirs.observations, "conventions": conventions})
    other_dtype = replace(theirs, variant="bool", dtype="bool")
    path = write_run(tmp_path / "hostile.jsonl", "run", [mine, off, loose, moved, claimed])
    compared = {r.variant: r for r in cross_run.compare_observations(load_results([path]).records, ALL_CASES())}
    assert compared["jit"].outcome == "fail" and "grad" in compared["jit"].message
    assert compared["loose"].outcome == "not_applicable" and "outside [-1, 1]" in compared["loose"].message
    assert compared["moved"].outcome == "not_applicable" and "not those of seed 0" in compared["moved"].message
    assert "other than those the jax adapter here declares" in compared["claimed"].message
    assert compared["eager"].outcome == "fail"  # torch against the file that is off
    empty = replace(theirs, observations={**theirs.observations, "probes": []})
    path = write_run(tmp_path / "empty.jsonl", "run", [mine, empty])
    assert {r.outcome for r in cross_run.compare_observations(load_results([path]).records, ALL_CASES())} == {
        "not_applicable"
    }
    with pytest.raises(observations.Unreadable, match="not one the suite runs"):
        observations.read_gradient_observation(other_dtype.observations, "bool", shipped(mine.case))


def test_the_comparison_needs_no_framework(tmp_path):
    """The merge runs where only the results files are: reading and comparing imports no framework."""
    import subprocess
    import sys

    script = (
        "import sys; from conformance.report import cross_run, write_report; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "[]", completed.stderr[-1000:]


def test_the_version_view_shows_the_first_version_that_differs(healthy, planted, tmp_path):
    torch = [r for r in healthy if r.backend == "torch"]
    faults.torch_scaled_gradients(planted)
    newest = [observed("torch", "eager", r.case, r.dtype) for r in torch]
    planted.undo()
    files = [
        write_run(tmp_path / f"{version}.jsonl", f"run-{version}", [replace(r, framework_version=version) for r in rs])
        for version, rs in (("2.9.1", torch), ("2.10.0", torch), ("2.11.0", newest))
    ]
    records = load_results(files).records
    compared = cross_run.compare_observations(records, ALL_CASES())
    view = next(v for v in axis_views(records + compared) if v.axis == "version")
    assert view.backend == "torch" and view.values == ("2.9.1", "2.10.0", "2.11.0")  # in version order, not text
    assert view.changes and {(c.before, c.after, c.outcome) for c in view.changes} == {("2.10.0", "2.11.0", "fail")}


ACCUMULATION_CASES = ["seed/accumulate-sgd", "accumulation/mse-four-micro-batches"]


def observed_accumulation(name: str, case_id: str, dtype: str, seed: int = 0) -> ResultRecord:
    """The record `accumulation.at_probes` writes, made here without pytest."""
    backend, case = backends.load(name), shipped(case_id)
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    probes = observations.probe_inputs(case, dtype, seed)
    runs = [backend.accumulation(case, probe, dtype, backend.variants[0], "cpu") for probe in probes]
    observation = observations.accumulation_observation(case, seed, probes, runs, backend.conventions)
    variant = backend.variants[0]
    return ResultRecord(
        case_id, "accumulation.at_probes", name, variant, "cpu", dtype, "1.0", "pass", observations=observation
    )


@pytest.fixture(scope="module")
def healthy_accumulation() -> list[ResultRecord]:
    return [
        observed_accumulation(name, case_id, dtype)
        for case_id in ACCUMULATION_CASES
        for dtype in ("float32", "float64")
        for name, _ in UPDATE_COLUMNS
    ]


def accumulation_verdicts(paths) -> dict[tuple, tuple]:
    cases = [shipped(case_id) for case_id in ACCUMULATION_CASES]
    compared = cross_run.compare_observations(load_results(paths).records, cases)
    return {(r.case, r.backend, r.dtype): (r.outcome, r.explanation) for r in compared}


def test_accumulation_runs_made_apart_compare_as_one_run(healthy_accumulation, tmp_path):
    """torch's sum against Keras' and optax's mean: explained, from the files alone; Keras against optax: the same
    mean, except where optax's float32 accumulator in a float64 run needs explaining."""
    alone = [
        write_run(tmp_path / f"{name}.jsonl", f"run-{name}", [r for r in healthy_accumulation if r.backend == name])
        for name, _ in UPDATE_COLUMNS
    ]
    one = accumulation_verdicts([write_run(tmp_path / "all.jsonl", "run-all", healthy_accumulation)])
    assert accumulation_verdicts(alone) == one and len(one) == len(healthy_accumulation)
    outcome, explanation = one[("accumulation/mse-four-micro-batches", "torch", "float32")]
    assert outcome == "divergent" and "gives the sum" in explanation and "gives the mean" in explanation
    assert "fail" not in {outcome for outcome, _ in one.values()}
    keras_and_optax = [r for r in healthy_accumulation if r.backend != "torch" and r.dtype == "float32"]
    path = write_run(tmp_path / "means.jsonl", "run-means", keras_and_optax)
    assert {outcome for outcome, _ in accumulation_verdicts([path]).values()} == {"pass"}


def test_a_planted_accumulation_fault_is_found_from_the_files_alone(healthy_accumulation, planted, tmp_path):
    faults.torch_overwritten_accumulation(planted)
    broken = [observed_accumulation("torch", case_id, "float32") for case_id in ACCUMULATION_CASES]
    planted.undo()
    jax = [r for r in healthy_accumulation if r.backend == "jax" and r.dtype == "float32"]
    files = [write_run(tmp_path / "torch.jsonl", "t", broken), write_run(tmp_path / "jax.jsonl", "j", jax)]
    found = accumulation_verdicts(files)
    assert found[("accumulation/mse-four-micro-batches", "torch", "float32")][0] == "fail"
    assert found[("accumulation/mse-four-micro-batches", "jax", "float32")][0] == "fail"
    assert main_report([*map(str, files), "-o", str(tmp_path / "index.html")]) == 1


def test_an_accumulation_file_cannot_claim_another_mechanism(healthy_accumulation, tmp_path):
    """A torch file that claims to average (or to hold a float32 accumulator) is held to what the torch adapter
    declares; a file whose micro-batch count is off is malformed."""
    mine = next(r for r in healthy_accumulation if r.backend == "jax" and r.dtype == "float64")
    theirs = next(
        r for r in healthy_accumulation if r.backend == "torch" and r.case == mine.case and r.dtype == "float64"
    )
    averaging = replace(_hostile(theirs, promise=lambda entry: "mean"), variant="averaging")
    narrower = replace(_hostile(theirs, accumulator_dtype=lambda entry: "float32"), variant="narrower")
    short = replace(_hostile(theirs, micro_gradients=lambda entry: entry["micro_gradients"][:1]), variant="short")
    path = write_run(tmp_path / "hostile.jsonl", "run", [mine, averaging, narrower, short])
    compared = {r.variant: r for r in cross_run.compare_observations(load_results([path]).records, ALL_CASES())}
    assert "other than the one the torch adapter declares" in compared["averaging"].message
    assert "other than the one the torch adapter declares" in compared["narrower"].message
    assert "malformed accumulation observation" in compared["short"].message
    assert compared["jit"].outcome == "not_applicable"


def test_comparing_in_processes_gives_the_records_of_one_process(healthy, healthy_accumulation, tmp_path):
    """`conformance report` compares the cases in as many processes as there are cores: the same records."""
    records = load_results([write_run(tmp_path / "all.jsonl", "run", healthy + healthy_accumulation)]).records
    one = cross_run.compare_observations(records, ALL_CASES())
    several = cross_run.compare_observations(records, ALL_CASES(), processes=2)
    assert len({r.case for r in one}) > 2 and sorted(map(repr, one)) == sorted(map(repr, several))


def test_an_accumulation_merge_is_not_fooled_by_a_file_and_explains_every_probe(healthy_accumulation, tmp_path):
    """Found by review: a number too large for a float is malformed, not the end of the merge; a narrower
    accumulator claimed for a backend whose adapter is not here widens nothing; the pair names every reason its
    probes needed (the probe at zero needs only the reductions, the others optax's float32 accumulator too)."""
    case = "accumulation/mse-four-micro-batches"
    torch, jax = (
        next(r for r in healthy_accumulation if (r.backend, r.case, r.dtype) == (name, case, "float64"))
        for name in ("torch", "jax")
    )
    huge = replace(_hostile(torch, accumulated=lambda entry: {"w": [10**400, 0.0, 0.0]}), variant="huge")
    slightly_off = lambda entry: _scaled(entry["accumulated"], 1 + 1e-7)  # noqa: E731
    claimed = _hostile(torch, accumulator_dtype=lambda entry: "float32", accumulated=slightly_off)
    elsewhere = replace(claimed, backend="elsewhere")  # no adapter here: its claim cannot be held to a declaration

    def merged(*records) -> dict:
        path = write_run(tmp_path / "review.jsonl", "run", list(records))
        return {
            r.backend + r.variant: r for r in cross_run.compare_observations(load_results([path]).records, ALL_CASES())
        }

    assert "malformed accumulation observation (OverflowError" in merged(jax, huge)["torchhuge"].message
    assert merged(jax, elsewhere)["elsewhereeager"].outcome == "fail"
    pair = merged(torch, jax)["torcheager"].pairs[0]
    assert pair["outcome"] == "divergent" and "gives the sum" in pair["why"] and "float32" in pair["why"]
