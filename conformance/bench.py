"""`conformance bench`: where the time of one example of `gradient.matches_reference` goes, per backend, variant,
dtype and case, beside a bare loop that differentiates with the framework alone.

Per example (medians over repeats, after a warm-up that compiles what the suite caches):
    bare       one differentiation as the framework's users write it, inputs already in the framework
    adapter    the backend's `differentiate_once`, as the property calls it: inputs converted in, one
               differentiation, values and gradients copied out
    reference  the exact gradient and its bound (`exact_gradient`), once the case is compiled
    example    one Hypothesis example of the property test itself, as pytest runs it
    harness    example - adapter - reference: drawing, comparison, bookkeeping and Hypothesis' own work
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CASES = ("losses/quadratic-bowl", "losses/tanh-layer", "losses/softmax-cross-entropy", "losses/kitchen-sink")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Row:
    backend: str
    variant: str
    dtype: str
    case: str
    bare_ms: float | None  # None: the backend has no bare loop
    adapter_ms: float
    reference_ms: float
    example_ms: float

    @property
    def harness_ms(self) -> float:
        return self.example_ms - self.adapter_ms - self.reference_ms


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of `call`, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def example_ms(spec, repeats: int) -> float:
    """The median time per example of the property test run by Hypothesis, its settings the suite's profile."""
    from conformance.item import ConformanceItem
    from conformance.property_tests.test_gradients import test_matches_reference

    per_example = []
    for _ in range(repeats + 1):  # the first run warms up: compilation is cached per case, as in the suite
        item = ConformanceItem(spec, other_backends=[])
        start = time.perf_counter()
        test_matches_reference(conformance_item=item)
        per_example.append((time.perf_counter() - start) / max(item.examples, 1))
    return 1000 * statistics.median(per_example[1:])


def measure(backend, case, variant: str, dtype: str, repeats: int) -> Row:
    from conformance.item import ItemSpec
    from conformance.reference.gradients import exact_gradient

    rng = np.random.default_rng(0)
    inputs = {
        spec.name: spec.value.astype(dtype)
        if spec.value is not None
        else rng.uniform(*spec.range, spec.shape).astype(dtype)
        for spec in case.tensors
    }
    try:
        bare = backend.bare_gradients(case, inputs, dtype, variant, "cpu")
        bare()
        bare_ms = median_ms(bare, repeats)
    except NotImplementedError:
        bare_ms = None
    backend.differentiate_once(case, inputs, dtype, variant, "cpu")
    adapter = median_ms(lambda: backend.differentiate_once(case, inputs, dtype, variant, "cpu"), repeats)
    exact_gradient(case, inputs, backend.conventions, dtype)
    reference = median_ms(lambda: exact_gradient(case, inputs, backend.conventions, dtype), repeats)
    spec = ItemSpec("gradient.matches_reference", case, backend.name, variant, "cpu", dtype)
    return Row(
        backend.name, variant, dtype, case.id, bare_ms, adapter, reference, example_ms(spec, max(3, repeats // 10))
    )


def table(rows: Sequence[Row]) -> str:
    """Markdown: one line per row, then the medians over rows."""

    def shown(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    lines = [
        "| backend | variant | dtype | case | bare | adapter | reference | harness | example | example / bare |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = "–" if not row.bare_ms else f"{row.example_ms / row.bare_ms:.0f}"
        lines.append(
            f"| {row.backend} | {row.variant} | {row.dtype} | {row.case} | {shown(row.bare_ms)} | "
            f"{shown(row.adapter_ms)} | {shown(row.reference_ms)} | {shown(row.harness_ms)} | "
            f"{shown(row.example_ms)} | {ratio} |"
        )
    medians = {
        name: statistics.median(getattr(row, name) for row in rows)
        for name in ("adapter_ms", "reference_ms", "harness_ms", "example_ms")
    }
    lines.append(
        "\nmedian over rows (ms per example): "
        + ", ".join(f"{name.removesuffix('_ms')} {value:.3f}" for name, value in medians.items())
    )
    return "\n".join(lines) + "\n"


def main_bench(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="conformance bench", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", default=[], metavar="NAME", help="repeatable; default: all")
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="ID",
        help=f"a shipped case id, repeatable (default: {', '.join(DEFAULT_CASES)})",
    )
    parser.add_argument("--dtype", action="append", default=[], choices=DTYPES, help="default: both")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement (default 50)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="also write the table to FILE")
    arguments = parser.parse_args(argv)

    from conformance import backends
    from conformance.cases import CaseError, load_case
    from conformance.pytest_plugin import SHIPPED_CASES

    try:
        cases = [
            load_case(SHIPPED_CASES / f"{case_id}.toml", SHIPPED_CASES) for case_id in arguments.case or DEFAULT_CASES
        ]
        chosen = [backends.load(name) for name in arguments.backend or backends.known_names()]
    except (CaseError, backends.UnknownBackend) as error:
        print(f"conformance bench: {error}", file=sys.stderr)
        return 2
    rows = []
    for backend in chosen:
        if backend.unavailable_reason() is not None:
            print(f"conformance bench: {backend.name}: {backend.unavailable_reason()}", file=sys.stderr)
            continue
        for variant in backend.variants:
            for dtype in arguments.dtype or DTYPES:
                for case in cases:
                    rows.append(measure(backend, case, variant, dtype, arguments.repeats))
                    print(table(rows[-1:]).splitlines()[2], file=sys.stderr, flush=True)
    if not rows:
        return 2
    text = table(rows)
    print(text)
    if arguments.output:
        arguments.output.write_text(text, encoding="utf-8")
    return 0
