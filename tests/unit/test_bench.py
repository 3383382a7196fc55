"""`conformance bench` times what it says: the bare loop, the adapter, the reference and the example each cost time,
and the example, which contains the other two, costs more than the adapter and the reference together."""

from __future__ import annotations

import pytest

from conformance import backends
from conformance.bench import main_bench


def test_bench_splits_an_example_into_its_parts(tmp_path, capsys):
    if backends.load("torch").unavailable_reason():
        pytest.skip("torch is not installed")
    output = tmp_path / "bench.md"
    assert (
        main_bench(
            [
                "--backend",
                "torch",
                "--case",
                "losses/tanh-layer",
                "--dtype",
                "float64",
                "--repeats",
                "5",
                "-o",
                str(output),
            ]
        )
        == 0
    )
    rows = [line for line in output.read_text().splitlines() if line.startswith("| torch ")]
    assert [row.split("|")[2].strip() for row in rows] == ["eager", "compile"]  # a row per variant
    for row in rows:
        bare, adapter, reference, harness, example = (float(cell) for cell in row.split("|")[5:10])
        assert min(bare, adapter, reference, harness) > 0 and example > adapter + reference
    eager_bare, eager_adapter = (float(cell) for cell in rows[0].split("|")[5:7])
    # the adapter's copies cost more than timing noise eagerly; a compiled call's own noise (0.5-0.8 ms) hides them
    assert eager_bare < eager_adapter
    assert "median over rows" in capsys.readouterr().out


def test_bench_refuses_an_unknown_case_in_one_line(capsys):
    assert main_bench(["--case", "losses/no-such-case"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
