"""`conformance mutate` and `conformance soak` judge from result records: a fault counts as caught only where the
run without it was healthy, and a failure the suite already lists as a framework's own is not a false alarm."""

from __future__ import annotations

import json

from conformance import faults
from conformance.mutation import table, verdict
from conformance.soak import outcome_counts

FAULT = faults.find("longer-step:torch")


def test_a_fault_is_caught_only_where_the_baseline_was_healthy():
    baseline = {
        ("a", "update.matches_reference", "eager", "float32"): "pass",
        ("a", "accumulation.native", "eager", "float32"): "divergent",  # explained: still healthy
        ("a", "accumulation.native", "eager", "float64"): "fail",
    }  # broken without the fault
    planted = {key: "fail" for key in baseline}
    assert verdict(FAULT, planted, baseline).caught_by == ("accumulation.native", "update.matches_reference")
    only_broken = {("a", "accumulation.native", "eager", "float64"): "fail"}
    assert not verdict(FAULT, only_broken, baseline).caught


def test_an_uncaught_fault_stands_out_in_the_table():
    caught = verdict(FAULT, {("a", "p", "v", "d"): "fail"}, {("a", "p", "v", "d"): "pass"})
    missed = verdict(FAULT, {("a", "p", "v", "d"): "pass"}, {("a", "p", "v", "d"): "pass"})
    rows = table([caught, missed]).splitlines()
    assert "| longer-step | torch |" in rows[2] and "| p | p |" in rows[2]
    assert "**NOT CAUGHT**" in rows[3]


def test_a_variant_that_ran_the_properties_and_caught_nothing_is_named_in_the_table():
    baseline = {("a", "update.matches_reference", variant, "float32"): "pass" for variant in ("for-loop", "fused")}
    planted = {**baseline, ("a", "update.matches_reference", "for-loop", "float32"): "fail"}
    found = verdict(FAULT, planted, baseline)
    assert found.caught_in == ("for-loop",) and found.missed_in == ("fused",) and not found.caught
    assert "| for-loop; **missed in fused** |" in table([found]).splitlines()[2]
    everywhere = verdict(FAULT, dict.fromkeys(baseline, "fail"), baseline)
    assert everywhere.caught and "| for-loop, fused |" in table([everywhere]).splitlines()[2]
    # a variant whose items were not applicable without the fault (fused RMSprop) misses nothing
    not_applicable = {**baseline, ("a", "update.matches_reference", "fused", "float32"): "not_applicable"}
    assert verdict(FAULT, planted, not_applicable).caught


def test_every_fault_has_a_distinct_key_and_cases():
    keys = [fault.key for fault in faults.FAULTS]
    assert len(keys) == len(set(keys)) and all(fault.cases and fault.expected for fault in faults.FAULTS)
    assert not {(f.name, f.backend) for f in faults.FAULTS} & set(faults.NOT_PLANTED)


def test_soak_counts_known_failures_apart_and_skips_a_cut_off_line(tmp_path):
    records = [
        {"kind": "run"},
        {"kind": "result", "outcome": "pass"},
        {"kind": "result", "outcome": "fail", "message": "known: optax.MultiSteps keeps float32"},
        {"kind": "result", "outcome": "fail", "message": "gradient.matches_reference: x"},
    ]
    path = tmp_path / "seed-1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "res', encoding="utf-8")
    assert outcome_counts(path) == {"pass": 1, "known": 1, "fail": 1}


def test_only_variants_that_run_the_properties_meant_to_catch_a_fault_can_miss_it():
    """Keras' gradient_accumulation_steps runs in the accumulation items (the first variant) alone: a training step
    under tf.function, which does not use it, has no way to show its fault."""
    accumulation = faults.find("overwritten-accumulation:tensorflow")
    baseline = {
        ("a", "accumulation.native", "eager", "float32"): "pass",
        ("a", "update.matches_reference", "eager", "float32"): "pass",
        ("a", "update.matches_reference", "xla", "float32"): "pass",
    }
    planted = {**baseline, ("a", "accumulation.native", "eager", "float32"): "fail"}
    found = verdict(accumulation, planted, baseline)
    assert found.ran_in == ("eager",) and found.caught
    unseen = verdict(accumulation, dict(baseline), baseline)
    assert unseen.missed_in == ("eager",) and not unseen.caught


def test_a_compiler_fault_is_expected_only_in_the_compiled_variant():
    """torch.compile's fault cannot show in eager torch, whose items run the same properties: eager is not a miss;
    the compiled variant is, when it catches nothing."""
    compiler = faults.find("miscompiled-backward:torch")
    baseline = {("a", "gradient.matches_reference", variant, "float32"): "pass" for variant in ("eager", "compile")}
    planted = {**baseline, ("a", "gradient.matches_reference", "compile", "float32"): "fail"}
    found = verdict(compiler, planted, baseline)
    assert found.ran_in == ("compile",) and found.caught
    unseen = verdict(compiler, dict(baseline), baseline)
    assert unseen.missed_in == ("compile",) and not unseen.caught
