"""The decision whether two accumulation mechanisms agree (`update_properties.accumulation_agreement`), which the
merge makes for every two columns that observed an accumulation case at the same probes: a sum and a mean of the
same micro-batch gradients are an explained difference; a mechanism that does not do what it documents, or whose
micro-batch gradients are not the exact ones, is a failure whatever the other does."""

from __future__ import annotations

import numpy as np

from conformance.backends.base import AccumulationRun
from conformance.reference.conventions import Citation, KinkConventions
from conformance.reference.gradients import ReferenceGradient
from conformance.update_properties import AccumulationSide, accumulation_agreement

EXACT = [np.array([0.1, -3.0]), np.array([0.25, 2.0]), np.array([-0.5, 0.75])]  # three micro-batches' gradients
BOUND = 1e-7  # each exact gradient's rounding bound in float32, here a round figure
TORCH_LIKE = KinkConventions(abs_slope_at_zero=0.0, citations={"abs_slope_at_zero": Citation("sign(0) = 0", "a")})
JAX_LIKE = KinkConventions(abs_slope_at_zero=1.0, citations={"abs_slope_at_zero": Citation("select(x >= 0)", "b")})


def side(
    name: str,
    promise: str,
    accumulated=None,
    micro=None,
    held_in=None,
    conventions=TORCH_LIKE,
    exact=EXACT,
    dtype="float32",
    bound=BOUND,
) -> AccumulationSide:
    """A column whose micro-batch gradients are `micro` (the exact ones in `dtype` by default) and whose mechanism
    gives `accumulated` (by default what it documents, computed in float64)."""
    micro = [{"w": np.asarray(g, dtype)} for g in (micro or exact)]
    total = np.sum([g["w"].astype(np.float64) for g in micro], axis=0)
    if accumulated is None:
        accumulated = total if promise == "sum" else total / len(micro)
    run = AccumulationRun(
        f"{name}'s mechanism", promise, micro, {"w": accumulated}, f"https://{name}.example", accumulator_dtype=held_in
    )
    references = [ReferenceGradient(0.0, {"w": gradient}, {"w": np.full(2, bound)}) for gradient in exact]
    return AccumulationSide(name, run, references, conventions)


def test_the_same_reduction_agrees():
    verdict = accumulation_agreement(side("a", "mean"), side("b", "mean"), "float32")
    assert verdict.outcome == "pass" and verdict.comparison.ok


def test_a_sum_against_a_mean_is_explained_by_the_documented_reductions():
    verdict = accumulation_agreement(side("torch", "sum"), side("optax", "mean"), "float32")
    assert verdict.outcome == "divergent"
    assert "torch's mechanism gives the sum" in verdict.explanation
    assert "optax's mechanism gives the mean" in verdict.explanation
    assert verdict.citation == "https://optax.example; https://torch.example"


def test_a_mechanism_that_keeps_only_the_last_micro_batch_fails_whatever_the_other_does():
    overwritten = side("b", "sum", accumulated=EXACT[-1].astype(np.float32).astype(np.float64))
    for verdict in (
        accumulation_agreement(side("a", "sum"), overwritten, "float32"),
        accumulation_agreement(overwritten, side("a", "mean"), "float32"),
    ):
        assert verdict.outcome == "fail" and "b does not follow its own documentation" in verdict.comparison.detail


def test_micro_batch_gradients_a_tenth_of_a_percent_off_fail_though_the_mechanism_sums_them_right():
    off = side("b", "sum", micro=[g * 1.001 for g in EXACT])
    verdict = accumulation_agreement(side("a", "sum"), off, "float32")
    assert verdict.outcome == "fail" and "micro-batch" in verdict.comparison.where


def test_a_documented_narrower_accumulator_explains_only_its_own_precision():
    """A float32 mean in a float64 run: explained where the mechanism documents a float32 accumulator, a failure
    where it does not, and a failure beyond float32's rounding either way."""
    exact = [np.array([0.1, -3.0]), np.array([0.1 + 1e-12, 2.0])]
    float32_mean = (np.sum(exact, axis=0) / 2).astype(np.float32).astype(np.float64)

    def float64_side(name, promise, accumulated=None, held_in=None):
        return side(name, promise, accumulated, held_in=held_in, exact=exact, dtype="float64", bound=1e-16)

    torch = float64_side("torch", "sum")
    documented = accumulation_agreement(torch, float64_side("optax", "mean", float32_mean, "float32"), "float64")
    assert documented.outcome == "divergent" and "holds its accumulator in float32" in documented.explanation
    undocumented = accumulation_agreement(torch, float64_side("optax", "mean", float32_mean), "float64")
    assert undocumented.outcome == "fail"
    beyond = accumulation_agreement(
        torch, float64_side("optax", "mean", float32_mean * (1 + 1e-5), "float32"), "float64"
    )
    assert beyond.outcome == "fail"


def test_conventions_at_a_kink_explain_a_gap_in_the_exact_sums_and_nothing_more():
    """At |w| = 0 torch's exact slope is 0 and jax's 1: each mechanism sums its own exact gradients; the gap is
    explained by the conventions, cited; the same gap with equal conventions is a failure."""
    kink = [np.array([0.0, 1.0]), np.array([0.0, 2.0])]
    jax_kink = [np.array([1.0, 1.0]), np.array([1.0, 2.0])]
    torch = side("torch", "sum", exact=kink, conventions=TORCH_LIKE)
    jax = side("jax", "sum", exact=jax_kink, conventions=JAX_LIKE)
    verdict = accumulation_agreement(torch, jax, "float32")
    assert verdict.outcome == "divergent" and "conventions at a kink" in verdict.explanation
    assert "a" in verdict.citation.split("; ") and "b" in verdict.citation.split("; ")
    lying = side("jax", "sum", micro=jax_kink, exact=kink, conventions=TORCH_LIKE)  # its gradients are not exact
    assert accumulation_agreement(torch, lying, "float32").outcome == "fail"
