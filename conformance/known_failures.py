"""Failures the suite found in the frameworks themselves, kept visible: each item still runs, is recorded as
`fail` with the reason, and is an expected failure for pytest (not strict: draws whose values need no rounding
pass, and are recorded as passes).

Like the ONNX backend tests' exclusions, every entry says why; remove it when the framework is fixed.
"""

from __future__ import annotations

KNOWN_FAILURES: dict[tuple[str, str, str], str] = {
    ("accumulation.native", "jax", "float64"): (
        "optax.MultiSteps keeps acc_grads in float32 under jax.enable_x64 (optax 0.2.8: MultiStepsState.acc_grads "
        "has dtype float32 for float64 params), so float64 accumulation rounds to float32"
    ),
}


def known_failure(property_name: str, backend: str, dtype: str) -> str | None:
    return KNOWN_FAILURES.get((property_name, backend, dtype))
