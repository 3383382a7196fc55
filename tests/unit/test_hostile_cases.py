"""Hostile case files: whatever a file holds, loading it gives a valid `Case` or a one-line `CaseError` naming the
file and the field, in bounded time and memory, having run nothing.

Users run cases they did not write (`conformance run --cases DIR`), so a case file is untrusted input: random bytes,
random TOML, the shipped cases mutated field by field, deep nesting, huge numbers, look-alike unicode names.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.cases import (
    HYPERPARAMETERS,
    MAX_AXES,
    MAX_ELEMENTS,
    RULES,
    SCHEDULES,
    TOP_LEVEL_KEYS,
    Case,
    CaseError,
    load_cases,
)
from conformance.expressions import MAX_DEPTH, names_used
from conformance.pytest_plugin import SHIPPED_CASES

SHIPPED_FILES = sorted(SHIPPED_CASES.rglob("*.toml"))
MAX_SECONDS = 2.0
MAX_PEAK_BYTES = 64 * 2**20
SENTINEL = (
    Path(tempfile.gettempdir()) / "conformance-hostile-sentinel"
)  # fixed: xdist workers must collect the same ids
PAYLOADS = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"open('{SENTINEL}', 'w')",
    f"exec(\"open('{SENTINEL}', 'w')\")",
    f"sum(x, axis=__import__('os').system('touch {SENTINEL}'))",
]
LOOKALIKES = [  # fullwidth, bold and Cyrillic x, roman numeral ten, zero-width space, right-to-left marks, é, BOM
    "\uff58",
    "\U0001d431",
    "\u0445",
    "\u2179",
    "x\u200b",
    "\u200bx",
    "\u202ex",
    "x\u200f",
    "\u00e9",
    "\ufeffx",
]
FIELD_WORDS = sorted(
    {
        *TOP_LEVEL_KEYS,
        *HYPERPARAMETERS,
        *RULES,
        "schedule",
        "kind",
        *SCHEDULES,
        *(name for required, optional in SCHEDULES.values() for name in (*required, *optional)),
        "value",
        "shape",
        "range",
        "log",
        "expr",
        "rule",
        "steps",
        "micro_batches",
        "dtype",
        "float32",
        "x",
        "w",
        "grad.x",
        "grad.w",
    }
)
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ writing TOML


def toml_string(text: str) -> str:
    escaped = {'"': '\\"', "\\": "\\\\"}
    return (
        '"'
        + "".join(escaped.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text)
        + '"'
    )


def toml_value(value: Any) -> str:
    match value:
        case bool():
            return str(value).lower()
        case int() | float():
            return repr(value)  # nan, inf and -inf are TOML too
        case str():
            return toml_string(value)
        case datetime.date() | datetime.time():
            return value.isoformat()
        case list():
            return "[" + ", ".join(map(toml_value, value)) + "]"
        case dict():
            return "{" + ", ".join(f"{toml_string(key)} = {toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in document.items())


# ------------------------------------------------------------------------------------------------ loading, watched


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    yield tmp_path_factory.mktemp("hostile")
    assert not SENTINEL.exists(), "a payload in a case file was executed"


def written(folder: Path, content: str | bytes) -> Path:
    path = folder / "hostile.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def parsed(path: Path) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def outcome(path: Path) -> Case | CaseError:
    """Load one file watching time, memory and warnings; a valid Case within the limits, or a one-line CaseError
    that starts with the path and names a field of the document; any other exception fails the test."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (result,) = load_cases([path])
    except CaseError as error:
        result = error
    finally:
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"loading took {elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"loading peaked at {peak / 2**20:.0f} MB"
    assert not [str(warning.message) for warning in caught]  # a warning is a second line on stderr
    assert not SENTINEL.exists()
    if isinstance(result, CaseError):
        assert_names_file_and_field(result, path, parsed(path))
    else:
        assert_within_limits(result)
    return result


def assert_names_file_and_field(error: CaseError, path: Path, document: dict[str, Any] | None) -> None:
    message = str(error)
    assert message.isprintable(), "one line, no control characters"
    assert message.startswith(f"{path}: ") and error.problem
    if error.field.isprintable():  # otherwise the message carries it escaped
        assert message.startswith(f"{path}: {error.field}: " if error.field else f"{path}: ")
    if document is not None:
        assert any(error.field == key or error.field.startswith(f"{key}.") for key in {*document, *TOP_LEVEL_KEYS})


def assert_within_limits(case: Case) -> None:
    names = [spec.name for spec in case.tensors]
    assert len(set(names)) == len(names) and all(name.isascii() and name.isidentifier() for name in names)
    assert names_used(case.loss) <= set(names) and case.loss_source.isascii()
    assert case.title.isprintable() and case.id.isprintable()
    assert sum(spec.size for spec in case.tensors) <= MAX_ELEMENTS
    for spec in case.tensors:
        assert len(spec.shape) <= MAX_AXES and all(n >= 1 for n in spec.shape)
        if spec.value is not None:
            assert spec.value.shape == spec.shape and np.isfinite(spec.value).all()
        else:
            assert math.isfinite(spec.range[0]) and math.isfinite(spec.range[1]) and spec.range[0] <= spec.range[1]


# ------------------------------------------------------------------------------------------------ strategies

numbers = (
    st.integers()
    | st.floats()
    | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**400, -(10**400), 1e308])
    | st.integers(-2, 300)
)
hostile_strings = st.sampled_from(
    [
        *PAYLOADS,
        *LOOKALIKES,
        *FIELD_WORDS,
        "",
        " ",
        "x\ny",
        "sum(x)",
        "x ** 2",
        "1if x else 2",
        "2 ** 2 ** 99",
        "1e308 * 1e308",
        "9" * 1000,
        "sum(x, axis=" + "9" * 40 + ")",
        "(" * 500 + "x" + ")" * 500,
        "exp(" * (MAX_DEPTH + 2) + "x" + ")" * (MAX_DEPTH + 2),
    ]
) | st.text(max_size=12)
scalars = numbers | st.booleans() | hostile_strings | st.dates() | st.datetimes() | st.times()
keys = st.sampled_from(FIELD_WORDS) | st.text(max_size=6)
hostile_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def value_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path to every value in a parsed document, the document itself first."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [prefix, *(path for key, child in children for path in value_paths(child, (*prefix, key)))]


def mutated(document: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """One to three edits at random places: a value replaced, removed, or a key added to a table."""
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        *parents, last = data.draw(st.sampled_from(value_paths(document)[1:] or [("title",)]), label="where")
        container = document
        for key in parents:
            container = container[key]
        edit = data.draw(st.sampled_from(["replace", "remove", "add"]), label="edit")
        if edit == "replace" or (edit == "remove" and isinstance(container, list)):
            container[last] = data.draw(hostile_values, label="value")
        elif edit == "remove":
            del container[last]
        elif isinstance(container[last], dict):
            container[last][data.draw(keys, label="key")] = data.draw(hostile_values, label="value")
    return document


def scalar_case(**fields: Any) -> dict[str, Any]:
    """The seed loss on x = 2.0, with fields replaced or added."""
    return {"variables": {"x": {"value": 2.0}}, "loss": {"expr": "(3 * x + 5 - 10) ** 2"}, **fields}


# ------------------------------------------------------------------------------------------------ fuzz


@FUZZ
@given(content=st.binary(max_size=400) | st.text(max_size=400) | st.text(alphabet="[]{}=\"'.,#\n abx01", max_size=400))
def test_random_bytes_and_text(folder, content):
    outcome(written(folder, content))


@FUZZ
@given(
    over_a_valid_case=st.booleans(),
    fields=st.dictionaries(st.sampled_from(sorted(TOP_LEVEL_KEYS)) | keys, hostile_values, max_size=3),
)
def test_random_toml_documents(folder, over_a_valid_case, fields):
    """Random fields, alone or over a valid case, so that the checks after the first one are reached too."""
    document = {**(scalar_case() if over_a_valid_case else {}), **fields}
    outcome(written(folder, toml_document(document)))


@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_shipped_cases_mutated_field_by_field(folder, data):
    source = data.draw(st.sampled_from(SHIPPED_FILES), label="shipped case")
    text = toml_document(mutated(tomllib.loads(source.read_text("utf-8")), data))
    outcome(written(folder, text))


nested_numbers = st.recursive(
    numbers | st.booleans() | st.text(max_size=2), lambda c: st.lists(c, max_size=4), max_leaves=30
)
tensor_entries = st.fixed_dictionaries(
    {},
    optional={
        "value": nested_numbers,
        "shape": st.lists(st.integers(-2, 300), max_size=MAX_AXES + 2) | nested_numbers,
        "range": st.lists(numbers, max_size=3) | nested_numbers,
    },
)


@FUZZ
@given(entry=tensor_entries, golden=st.none() | nested_numbers, loss=st.sampled_from(["sum(x)", "x", "mean(x ** 2)"]))
def test_wrong_shapes_values_and_ranges(folder, entry, golden, loss):
    """Ragged lists, 5+ axes, zero or negative sizes, a value against its shape, NaN, infinite or reversed ranges."""
    expect = {} if golden is None else {"expect": {"grad.x": golden}}
    document = scalar_case(variables={"x": entry}, loss={"expr": loss}, **expect)
    result = outcome(written(folder, toml_document(document)))
    if isinstance(result, CaseError):
        assert result.field.startswith(("variables.x", "expect.grad.x", "loss.expr"))


@FUZZ
@given(
    name=st.sampled_from(LOOKALIKES) | st.text(min_size=1, max_size=4),
    loss=st.sampled_from(LOOKALIKES).map("{} ** 2".format) | st.text(min_size=1, max_size=8),
)
def test_unicode_names_and_lookalikes(folder, name, loss):
    """A name may only be an ASCII identifier; `ｘ` or `x` with a zero-width space must not silently stand for x."""
    document = scalar_case(variables={"x": {"value": 2.0}, name: {"value": 1.0}}, loss={"expr": loss})
    result = outcome(written(folder, toml_document(document)))
    if isinstance(result, CaseError):
        assert result.field in (f"variables.{name}", "loss.expr")


# ------------------------------------------------------------------------------------------------ chosen inputs

NESTING_SITES = {
    "top level": "deep = @\n",
    "value": '[variables.x]\nvalue = @\n[loss]\nexpr = "x"\n',
    "shape": '[variables.x]\nshape = @\nrange = [0.0, 1.0]\n[loss]\nexpr = "x"\n',
    "range": '[variables.x]\nshape = [1]\nrange = @\n[loss]\nexpr = "sum(x)"\n',
    "loss": "[variables.x]\nvalue = 1.0\n[loss]\nexpr = @\n",
    "hyperparameter": toml_document(scalar_case()) + '[update]\nrule = "sgd"\nlr = @\n',
    "golden": toml_document(scalar_case()) + "[expect]\nx = @\n",
}
NESTINGS = {"arrays": ("[", "1.0", "]"), "inline tables": ("{a=", "1.0", "}")}


@pytest.mark.parametrize("depth", [2, 60, 400, 12_000])
@pytest.mark.parametrize("nesting", NESTINGS.values(), ids=NESTINGS.keys())
@pytest.mark.parametrize("site", NESTING_SITES.values(), ids=NESTING_SITES.keys())
def test_deep_nesting(folder, site, nesting, depth):
    opening, inner, closing = nesting
    outcome(written(folder, site.replace("@", opening * depth + inner + closing * depth)))


DEEP_EXPRESSIONS = [
    "(" * 201 + "x" + ")" * 201,
    "(" * 1999 + "x" + ")" * 1999,
    "exp(" * 999 + "x" + ")" * 999,
    "-" * 3999 + "x",
    "+" * 3999 + "x",
    "~" * 3999 + "x",
    "not " * 999 + "x",
    "lambda: " * 499 + "x",
    "x" + "[0]" * 1333,
    "x" + ".a" * 1999,
    "x" + " ** 1" * 799,
    "x" + " + x" * 999,
    "[" * 1999 + "]" * 1999,
    "sum(" * (MAX_DEPTH + 1) + "x" + ", axis=0)" * (MAX_DEPTH + 1),
]


@pytest.mark.parametrize("expr", DEEP_EXPRESSIONS, ids=[f"{e[:8]}...{len(e)}" for e in DEEP_EXPRESSIONS])
def test_deeply_nested_expressions(folder, expr):
    error = outcome(written(folder, toml_document(scalar_case(loss={"expr": expr}))))
    assert isinstance(error, CaseError) and error.field == "loss.expr"


DIGITS = "9" * 400
HUGE_OR_WRONG = {
    "integer value": ("[variables.x]\nvalue = " + "9" * 4000 + '\n[loss]\nexpr = "x"\n', "variables.x.value"),
    "integer past Python's digit limit": ("[variables.x]\nvalue = " + "9" * 5000 + '\n[loss]\nexpr = "x"\n', ""),
    "float overflowing to inf": ('[variables.x]\nvalue = 1.8e308\n[loss]\nexpr = "x"\n', "variables.x.value"),
    "largest float": ('[variables.x]\nvalue = 1e308\n[loss]\nexpr = "x"\n', None),
    "integer in a range": (
        f'[variables.x]\nshape = [1]\nrange = [0, {DIGITS}]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.range",
    ),
    "integer in a shape": (
        f'[variables.x]\nshape = [{DIGITS}]\nrange = [0, 1]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.shape",
    ),
    "integer hyperparameter": (toml_document(scalar_case()) + f'[update]\nrule = "sgd"\nlr = {DIGITS}\n', "update.lr"),
    "integer in a hyperparameter range": (
        toml_document(scalar_case()) + f'[update]\nrule = "sgd"\nlr = {{ range = [1, {DIGITS}] }}\n',
        "update.lr.range",
    ),
    "integer steps": (toml_document(scalar_case()) + f'[update]\nrule = "sgd"\nsteps = {DIGITS}\n', "update.steps"),
    "integer micro-batches": (
        toml_document(scalar_case()) + f"[accumulate]\nmicro_batches = {DIGITS}\n",
        "accumulate.micro_batches",
    ),
    "integer golden": (toml_document(scalar_case()) + f"[expect]\nx = [{DIGITS}]\n", "expect.x"),
    "power tower": (toml_document(scalar_case(loss={"expr": "x * 2 ** 2 ** 99"})), "loss.expr"),
    "overflowing product": (toml_document(scalar_case(loss={"expr": "x * 1e308 * 1e308"})), "loss.expr"),
    "literal of 3000 digits": (toml_document(scalar_case(loss={"expr": "x * " + "9" * 3000})), "loss.expr"),
    "hexadecimal literal": (toml_document(scalar_case(loss={"expr": "x * 0x" + "f" * 3000})), "loss.expr"),
    "huge exponent": (toml_document(scalar_case(loss={"expr": "x ** -(2 ** 99)"})), "loss.expr"),
    "huge axis": (toml_document(scalar_case(loss={"expr": "sum(x, axis=" + "9" * 25 + ")"})), "loss.expr"),
    "bool in a value": ('[variables.x]\nvalue = [1.0, true]\n[loss]\nexpr = "sum(x)"\n', "variables.x.value"),
    "number as a string": ('[variables.x]\nvalue = "2.0"\n[loss]\nexpr = "x"\n', "variables.x.value"),
    "empty value": ('[variables.x]\nvalue = [[], []]\n[loss]\nexpr = "sum(x)"\n', "variables.x.value"),
    "keyword as a name": (
        toml_document(scalar_case(variables={"x": {"value": 1.0}, "lambda": {"value": 1.0}})),
        "variables.lambda",
    ),
    "data named as a variable": (toml_document(scalar_case(data={"x": {"value": 1.0}})), "data.x"),
    "newline in a title": (toml_document(scalar_case(title="two\nlines")), "title"),
    "right-to-left mark in a tag": (toml_document(scalar_case(tags=["\u202egnp.exe"])), "tags"),
}


@pytest.mark.parametrize(("text", "field"), HUGE_OR_WRONG.values(), ids=HUGE_OR_WRONG.keys())
def test_huge_literals_and_wrong_types(folder, text, field):
    result = outcome(written(folder, text))
    assert (result.field if isinstance(result, CaseError) else None) == field


def sgd_with(**fields: Any) -> str:
    return toml_document(scalar_case(update={"rule": "sgd", "lr": 0.1, **fields}))


BAD_CLIPS = {
    "negative clip_norm": (sgd_with(clip_norm=-1.0), "update.clip_norm"),
    "zero clip_value": (sgd_with(clip_value=0), "update.clip_value"),
    "infinite clip_norm_per_variable": (sgd_with(clip_norm_per_variable=math.inf), "update.clip_norm_per_variable"),
    "NaN clip_norm": (sgd_with(clip_norm=math.nan), "update.clip_norm"),
    "clip as a string": (sgd_with(clip_norm="1.0"), "update.clip_norm"),
    "clip as a boolean": (sgd_with(clip_value=True), "update.clip_value"),
    "clip range from zero": (sgd_with(clip_norm={"range": [0.0, 1.0]}), "update.clip_norm.range"),
    "clip range below zero": (sgd_with(clip_value={"range": [-1.0, 1.0]}), "update.clip_value.range"),
    "reversed clip range": (sgd_with(clip_norm={"range": [2.0, 1.0]}), "update.clip_norm.range"),
    "two clips": (sgd_with(clip_norm=1.0, clip_value=0.5), "update.clip_value"),
}


@pytest.mark.parametrize(("text", "field"), BAD_CLIPS.values(), ids=BAD_CLIPS.keys())
def test_a_clip_threshold_must_be_one_positive_number(folder, text, field):
    result = outcome(written(folder, text))
    assert (result.field if isinstance(result, CaseError) else None) == field


def scheduled(lr: Any = 0.1, **schedule: Any) -> str:
    update = {"rule": "sgd", "schedule": schedule, **({} if lr is None else {"lr": lr})}
    return toml_document(scalar_case(update=update))


EXPONENTIAL = {"kind": "exponential", "decay_rate": 0.5, "decay_steps": 2}
WARMUP = {"kind": "warmup_cosine", "warmup_steps": 2, "decay_steps": 4, "peak": 0.1}
PIECEWISE = {"kind": "piecewise", "boundaries": [2, 4], "values": [0.1, 0.05, 0.01]}
BAD_SCHEDULES = {
    "not a table": (sgd_with(schedule="cosine"), "update.schedule.kind"),
    "unknown kind": (scheduled(kind="linear", decay_steps=2), "update.schedule.kind"),
    "no kind": (scheduled(decay_steps=2), "update.schedule.kind"),
    "kind as a number": (scheduled(kind=1), "update.schedule.kind"),
    "kind as a list": (scheduled(kind=[]), "update.schedule.kind"),
    "kind as a table": (scheduled(kind={"kind": "cosine"}), "update.schedule.kind"),
    "missing decay_steps": (scheduled(kind="cosine"), "update.schedule.decay_steps"),
    "a field of another kind": (scheduled(**EXPONENTIAL, peak=0.1), "update.schedule.peak"),
    "zero decay_steps": (scheduled(**{**EXPONENTIAL, "decay_steps": 0}), "update.schedule.decay_steps"),
    "fractional decay_steps": (scheduled(**{**EXPONENTIAL, "decay_steps": 2.5}), "update.schedule.decay_steps"),
    "boolean decay_steps": (scheduled(**{**EXPONENTIAL, "decay_steps": True}), "update.schedule.decay_steps"),
    "huge decay_steps": (scheduled(**{**EXPONENTIAL, "decay_steps": 10**30}), "update.schedule.decay_steps"),
    "negative decay_rate": (scheduled(**{**EXPONENTIAL, "decay_rate": -0.5}), "update.schedule.decay_rate"),
    "NaN decay_rate": (scheduled(**{**EXPONENTIAL, "decay_rate": math.nan}), "update.schedule.decay_rate"),
    "decay_rate as a string": (scheduled(**{**EXPONENTIAL, "decay_rate": "0.5"}), "update.schedule.decay_rate"),
    "staircase as a number": (scheduled(**EXPONENTIAL, staircase=1), "update.schedule.staircase"),
    "alpha above 1": (scheduled(kind="cosine", decay_steps=4, alpha=1.5), "update.schedule.alpha"),
    "negative alpha": (scheduled(kind="cosine", decay_steps=4, alpha=-0.1), "update.schedule.alpha"),
    "infinite peak": (scheduled(**{**WARMUP, "peak": math.inf}), "update.schedule.peak"),
    "warm-up down to its peak": (scheduled(lr=0.5, **WARMUP), "update.lr"),
    "warm-up from a zero lr": (scheduled(lr=0.0, **WARMUP), "update.lr"),
    "warm-up lr range past the peak": (scheduled(lr={"range": [0.01, 0.2]}, **WARMUP), "update.lr"),
    "a schedule without its lr": (scheduled(lr=None, **EXPONENTIAL), "update.lr"),
    "piecewise with an lr": (scheduled(**PIECEWISE), "update.lr"),
    "piecewise values one short": (
        scheduled(lr=None, **{**PIECEWISE, "values": [0.1, 0.05]}),
        "update.schedule.values",
    ),
    "piecewise boundaries not increasing": (
        scheduled(lr=None, **{**PIECEWISE, "boundaries": [4, 2]}),
        "update.schedule.boundaries",
    ),
    "piecewise boundary repeated": (
        scheduled(lr=None, **{**PIECEWISE, "boundaries": [2, 2]}),
        "update.schedule.boundaries",
    ),
    "piecewise boundary of zero": (
        scheduled(lr=None, **{**PIECEWISE, "boundaries": [0, 2]}),
        "update.schedule.boundaries",
    ),
    "piecewise without boundaries": (
        scheduled(lr=None, **{**PIECEWISE, "boundaries": [], "values": [0.1]}),
        "update.schedule.boundaries",
    ),
    "piecewise negative value": (
        scheduled(lr=None, **{**PIECEWISE, "values": [0.1, -0.05, 0.01]}),
        "update.schedule.values",
    ),
    "piecewise value as a string": (
        scheduled(lr=None, **{**PIECEWISE, "values": [0.1, "0.05", 0.01]}),
        "update.schedule.values",
    ),
    "piecewise values not a list": (scheduled(lr=None, **{**PIECEWISE, "values": 0.1}), "update.schedule.values"),
}


@pytest.mark.parametrize(("text", "field"), BAD_SCHEDULES.values(), ids=BAD_SCHEDULES.keys())
def test_a_schedule_is_refused_with_its_field(folder, text, field):
    result = outcome(written(folder, text))
    assert (result.field if isinstance(result, CaseError) else None) == field


@pytest.mark.parametrize(
    "schedule",
    [EXPONENTIAL, {**EXPONENTIAL, "staircase": True}, {"kind": "cosine", "decay_steps": 3, "alpha": 0.5}, WARMUP],
    ids=["exponential", "staircase", "cosine", "warmup_cosine"],
)
def test_a_well_formed_schedule_loads(folder, schedule):
    result = outcome(written(folder, scheduled(lr={"range": [0.01, 0.1]}, **schedule)))
    assert not isinstance(result, CaseError), result


def test_a_piecewise_schedule_gives_the_first_learning_rate(folder):
    case = outcome(written(folder, scheduled(lr=None, **PIECEWISE)))
    assert case.update.hyperparameters["lr"].value == 0.1 and case.update.schedule.values == (0.1, 0.05, 0.01)


def loss_case(expr: str, **tensors: Any) -> str:
    """A loss on a variable p and data y, both 2 by 3 unless `tensors` says otherwise."""
    document = {
        "variables": {"p": {"shape": [2, 3], "range": [0.1, 0.9]}},
        "data": {"y": {"shape": [2, 3], "range": [0.0, 1.0]}},
        "loss": {"expr": expr},
    }
    for name, spec in tensors.items():
        document["variables" if name.startswith("p") else "data"][name] = spec
    return toml_document(document)


BAD_LOSS_FUNCTIONS = {
    "one argument": loss_case("mse(p)"),
    "three arguments": loss_case("huber(p, y, y)"),
    "label smoothing above 1": loss_case("cross_entropy(p, y, label_smoothing=1.5)"),
    "negative label smoothing": loss_case("cross_entropy(p, y, label_smoothing=-0.1)"),
    "label smoothing a name": loss_case("cross_entropy(p, y, label_smoothing=p)"),
    "label smoothing a string": loss_case("cross_entropy(p, y, label_smoothing='0.1')"),
    "unknown reduction": loss_case("mse(p, y, reduction='avg')"),
    "reduction a number": loss_case("mse(p, y, reduction=1)"),
    "reduction none": loss_case("mse(p, y, reduction='none')"),
    "a string elsewhere": loss_case("mse(p, y) + sum('sum')"),
    "zero delta": loss_case("huber(p, y, delta=0)"),
    "negative delta": loss_case("huber(p, y, delta=-1.0)"),
    "unknown keyword": loss_case("mse(p, y, weight=2.0)"),
    "an axis it does not take": loss_case("mse(p, y, axis=0)"),
    "a keyword twice": loss_case("cross_entropy(p, y, axis=-1, axis=0)"),
    "an axis out of range": loss_case("cross_entropy(p, y, axis=2)"),
    "targets that depend on a variable": loss_case("mse(y, p * y)"),
    "targets that are the variable": loss_case("binary_cross_entropy(y, p)"),
    "shapes that differ": loss_case("mse(p, y)", y={"shape": [3], "range": [0.0, 1.0]}),
    "a scalar argument": loss_case("mse(sum(p), sum(y))"),
    "cross-entropy of a vector": loss_case("cross_entropy(sum(p, axis=0), sum(y, axis=0))"),
    "a loss function uncalled": loss_case("mse + sum(p)"),
}


@pytest.mark.parametrize("text", BAD_LOSS_FUNCTIONS.values(), ids=BAD_LOSS_FUNCTIONS.keys())
def test_a_loss_function_call_that_does_not_fit_is_refused(folder, text):
    result = outcome(written(folder, text))
    assert (result.field if isinstance(result, CaseError) else None) == "loss.expr", result


@pytest.mark.parametrize(
    "expr",
    [
        "cross_entropy(p, y, axis=0, label_smoothing=1.0, reduction='sum')",
        "binary_cross_entropy(p, y) + binary_cross_entropy_with_logits(p, y, reduction='sum')",
        "huber(p, y, delta=1e-3) + mse(p, y) + kl_divergence(log(p), y)",
        "mse(p, y ** 2 + 1)",
    ],
)
def test_a_loss_function_call_that_fits_loads(folder, expr):
    result = outcome(written(folder, loss_case(expr)))
    assert not isinstance(result, CaseError), result


@pytest.mark.parametrize("function", ["sum", "logsumexp"])
def test_an_axis_of_a_scalar_is_out_of_range(folder, function):
    error = outcome(written(folder, toml_document(scalar_case(loss={"expr": f"{function}(x, axis=0)"}))))
    assert isinstance(error, CaseError) and error.field == "loss.expr"


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("where", ["loss", "name", "title", "rule", "golden key", "top-level key"])
def test_payloads_are_never_executed(folder, payload, where):
    document = {
        "loss": scalar_case(loss={"expr": payload}),
        "name": scalar_case(variables={"x": {"value": 2.0}, payload: {"value": 1.0}}),
        "title": scalar_case(title=payload),
        "rule": scalar_case(update={"rule": payload}),
        "golden key": scalar_case(expect={payload: 1.0}),
        "top-level key": scalar_case(**{payload: 1.0}),
    }[where]
    outcome(written(folder, toml_document(document)))
    assert not SENTINEL.exists()


SPECIAL_FILES = {"fifo": os.mkfifo, "directory": Path.mkdir}  # not /dev/zero: were the check gone, memory would fill


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make", SPECIAL_FILES.values(), ids=SPECIAL_FILES.keys())
def test_a_special_file_is_refused_unread(tmp_path, make):
    """Reading a FIFO blocks until someone writes; reading a device such as /dev/zero never ends."""
    path = tmp_path / "special.toml"
    make(path)
    with pytest.raises(CaseError) as caught:
        load_cases([tmp_path])
    assert str(caught.value) == f"{path}: is not a regular file"


@pytest.mark.parametrize("name", ["two\nlines.toml", os.fsdecode(b"caf\xe9.toml")], ids=["newline", "not UTF-8"])
def test_a_file_name_that_is_no_printable_line_is_no_id(tmp_path, name):
    (tmp_path / name).write_text(toml_document(scalar_case()), "utf-8")
    with pytest.raises(CaseError) as caught:
        load_cases([tmp_path])
    assert caught.value.field == "id" and str(caught.value).isprintable()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (toml_document(scalar_case(loss={"expr": "x ** 2 + 1if x else 2"})), "loss.expr"),
        BAD_CLIPS["negative clip_norm"],
        BAD_SCHEDULES["unknown kind"],
    ],
    ids=["loss", "clip", "schedule"],
)
def test_the_command_line_exits_2_with_one_line_naming_the_file(tmp_path, text, field):
    """End to end, in a fresh process: a loader warning or traceback would show on stderr."""
    hostile = tmp_path / "cases" / "hostile.toml"
    hostile.parent.mkdir()
    hostile.write_text(text, "utf-8")
    command = [str(Path(sys.executable).parent / "conformance"), "run", "--cases", str(hostile.parent)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert f"{hostile}: {field}: " in line
