"""Case files: a valid one loads with the right fields and id; every invalid one is a one-line CaseError
that names the file and the field, because that line is all a user sees (`conformance run` exits 2 with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance.cases import MAX_ELEMENTS, CaseError, load_case, load_cases
from conformance.expressions import FUNCTIONS, Binary, Call, Negate, functions_used
from conformance.pytest_plugin import SHIPPED_CASES as SHIPPED

VALID = """
title = "a valid case"
tags = ["unit", "matmul"]

[variables.x]
value = 2.0

[variables.w]
shape = [3]
range = [-1.0, 1.0]

[data.a]
shape = [6, 3]
range = [-1.0, 1.0]

[loss]
expr = "(3 * x + 5 - 10) ** 2 + mean((a @ w - 1) ** 2)"

[update]
rule = "adam"
steps = 3
lr = 0.1
eps = { range = [1e-10, 1e-6], log = true }
amsgrad = false

[accumulate]
micro_batches = 3

[expect]
"grad.x" = 6.0
"x" = 2.0
"""

SCALAR = """
[variables.x]
value = 2.0
[loss]
expr = "x ** 2"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def case_error(path: Path) -> CaseError:
    with pytest.raises(CaseError) as caught:
        load_case(path)
    return caught.value


def test_a_valid_case_loads_with_every_field(tmp_path):
    case = load_case(write(tmp_path / "valid.toml", VALID))
    assert (case.id, case.title, case.tags) == ("valid", "a valid case", ("unit", "matmul"))
    x, w = case.variables
    assert (x.name, x.trainable, x.shape, float(x.value), x.range) == ("x", True, (), 2.0, None)
    assert (w.name, w.trainable, w.shape, w.value, w.range) == ("w", True, (3,), None, (-1.0, 1.0))
    (a,) = case.data
    assert (a.name, a.trainable, a.shape, a.range) == ("a", False, (6, 3), (-1.0, 1.0))
    assert case.variable_names == ("x", "w") and [spec.name for spec in case.tensors] == ["x", "w", "a"]
    assert isinstance(case.loss, Binary) and case.loss_source.startswith("(3 * x")
    assert (case.update.rule, case.update.steps) == ("adam", 3)
    hyper = case.update.hyperparameters
    assert (hyper["lr"].value, hyper["eps"].range, hyper["eps"].log) == (0.1, (1e-10, 1e-6), True)
    assert hyper["amsgrad"].value is False
    assert case.micro_batches == 3
    assert {key: float(value) for key, value in case.expect.items()} == {"grad.x": 6.0, "x": 2.0}


def test_a_golden_stated_to_one_dtype_holds_in_that_dtype_only(tmp_path):
    text = scalar_with(extra='[expect]\n"grad.x" = 4.0\n"x" = { value = 2.0, dtype = "float32" }\n')
    case = load_case(write(tmp_path / "golden.toml", text))
    assert case.expect_dtypes == {"x": "float32"}
    assert set(case.goldens("float32")) == {"grad.x", "x"} and set(case.goldens("float64")) == {"grad.x"}


def test_ids_are_paths_relative_to_the_root(tmp_path):
    write(tmp_path / "sub" / "name.toml", SCALAR)
    write(tmp_path / "sub" / "deeper" / "other.toml", SCALAR)
    write(tmp_path / "top.toml", 'id = "chosen"\n' + SCALAR)
    assert [case.id for case in load_cases([tmp_path])] == ["chosen", "sub/deeper/other", "sub/name"]
    assert load_case(tmp_path / "sub" / "name.toml").id == "name"  # no root: the file's stem
    assert [case.id for case in load_cases([tmp_path / "sub" / "name.toml"])] == ["name"]  # a file: its own root


def test_unicode_paths_load_and_are_named_in_errors(tmp_path):
    assert load_case(write(tmp_path / "café" / "ünï.toml", SCALAR), tmp_path).id == "café/ünï"
    path = write(tmp_path / "café" / "bad ü.toml", SCALAR.replace("x ** 2", "y"))
    assert str(path) in str(case_error(path))


def test_duplicate_ids_across_directories(tmp_path):
    first = write(tmp_path / "one" / "same.toml", SCALAR)
    second = write(tmp_path / "two" / "same.toml", SCALAR)
    with pytest.raises(CaseError) as caught:
        load_cases([tmp_path / "one", tmp_path / "two"])
    message = str(caught.value)
    assert caught.value.field == "id" and "\n" not in message
    assert message.startswith(f"{second}: id: ") and str(first) in message


def test_a_missing_path_is_a_case_error(tmp_path):
    with pytest.raises(CaseError, match="neither a case file nor a directory"):
        load_cases([tmp_path / "absent"])
    assert "cannot be read" in str(case_error(tmp_path / "absent.toml"))


def scalar_with(loss: str = "x ** 2", extra: str = "") -> str:
    return f'[variables.x]\nvalue = 2.0\n[loss]\nexpr = "{loss}"\n{extra}'


def tensors(loss: str, extra: str = "") -> str:
    """w [3], m [2, 3] trainable; a [6, 3] data."""
    return (
        f"[variables.w]\nshape = [3]\nrange = [-1.0, 1.0]\n[variables.m]\nshape = [2, 3]\nrange = [-1.0, 1.0]\n"
        f'[data.a]\nshape = [6, 3]\nrange = [-1.0, 1.0]\n[loss]\nexpr = "{loss}"\n{extra}'
    )


INVALID = {
    "unknown top-level key": ("colour = 'red'\n" + scalar_with(), "colour"),
    "missing variables": ('[loss]\nexpr = "1"\n', "variables"),
    "variables not a table": ("variables = 3\n" + '[loss]\nexpr = "x"\n', "variables"),
    "value and range": ('[variables.x]\nvalue = 1.0\nrange = [0.0, 1.0]\n[loss]\nexpr = "x"\n', "variables.x"),
    "neither value nor range": ('[variables.x]\nshape = [2]\n[loss]\nexpr = "sum(x)"\n', "variables.x"),
    "unknown tensor field": ('[variables.x]\nvalue = 1.0\nunit = "m"\n[loss]\nexpr = "x"\n', "variables.x.unit"),
    "empty range": ('[variables.x]\nshape = [2]\nrange = [1, 0]\n[loss]\nexpr = "sum(x)"\n', "variables.x.range"),
    "nan range": ('[variables.x]\nshape = [2]\nrange = [nan, 1.0]\n[loss]\nexpr = "sum(x)"\n', "variables.x.range"),
    "inf range": ('[variables.x]\nshape = [2]\nrange = [-inf, inf]\n[loss]\nexpr = "sum(x)"\n', "variables.x.range"),
    "range of three": ('[variables.x]\nshape = [2]\nrange = [0, 1, 2]\n[loss]\nexpr = "sum(x)"\n', "variables.x.range"),
    "nan value": ('[variables.x]\nvalue = [1.0, nan]\n[loss]\nexpr = "sum(x)"\n', "variables.x.value"),
    "ragged value": ('[variables.x]\nvalue = [[1.0, 2.0], [3.0]]\n[loss]\nexpr = "sum(x)"\n', "variables.x.value"),
    "value and wrong shape": (
        '[variables.x]\nvalue = [1.0, 2.0]\nshape = [3]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.shape",
    ),
    "unicode variable name": ('[variables."é"]\nvalue = 1.0\n[loss]\nexpr = "x"\n', "variables.é"),
    "function as a name": ('[variables.exp]\nvalue = 1.0\n[loss]\nexpr = "exp"\n', "variables.exp"),
    "huge shape": (
        '[variables.x]\nshape = [1000000]\nrange = [0.0, 1.0]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.shape",
    ),
    "huge product of a shape": (
        '[variables.x]\nshape = [16, 16, 16]\nrange = [0.0, 1.0]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.shape",
    ),
    "too many axes": (
        '[variables.x]\nshape = [1, 1, 1, 1, 1]\nrange = [0.0, 1.0]\n[loss]\nexpr = "sum(x)"\n',
        "variables.x.shape",
    ),
    "too many elements together": (tensors("sum(w)").replace("[6, 3]", f"[{MAX_ELEMENTS}, 1]"), "variables"),
    "no loss": ("[variables.x]\nvalue = 1.0\n", "loss"),
    "loss outside the language": (scalar_with("x.real"), "loss.expr"),
    "loss with an unknown name": (scalar_with("x + y"), "loss.expr"),
    "matmul mismatch": (tensors("sum(m @ a)"), "loss.expr"),
    "matmul of a scalar": (scalar_with("x @ x"), "loss.expr"),
    "broadcast mismatch": (tensors("sum(m + a)"), "loss.expr"),
    "axis out of range": (tensors("sum(sum(m, axis=2))"), "loss.expr"),
    "negative axis out of range": (tensors("sum(mean(w, axis=-2))"), "loss.expr"),
    "non-scalar loss": (tensors("a @ w"), "loss.expr"),
    "loss using no variable": (tensors("sum(a)"), "loss.expr"),
    "loss not a string": ("[variables.x]\nvalue = 1.0\n[loss]\nexpr = 3\n", "loss.expr"),
    "unknown rule": (scalar_with(extra='[update]\nrule = "adafactor"\n'), "update.rule"),
    "no rule": (scalar_with(extra="[update]\nlr = 0.1\n"), "update.rule"),
    "steps zero": (scalar_with(extra='[update]\nrule = "sgd"\nsteps = 0\n'), "update.steps"),
    "unknown hyperparameter": (
        scalar_with(extra='[update]\nrule = "sgd"\nlearning_rate = 0.1\n'),
        "update.learning_rate",
    ),
    "boolean hyperparameter given a number": (
        scalar_with(extra='[update]\nrule = "sgd"\nnesterov = 1\n'),
        "update.nesterov",
    ),
    "number hyperparameter given a boolean": (scalar_with(extra='[update]\nrule = "sgd"\nlr = true\n'), "update.lr"),
    "negative hyperparameter": (scalar_with(extra='[update]\nrule = "sgd"\nlr = -0.1\n'), "update.lr"),
    "nan hyperparameter": (scalar_with(extra='[update]\nrule = "sgd"\nlr = nan\n'), "update.lr"),
    "log range from zero": (
        scalar_with(extra='[update]\nrule = "sgd"\nlr = { range = [0.0, 1.0], log = true }\n'),
        "update.lr.range",
    ),
    "micro_batches not dividing": (
        tensors("sum(a @ w)", "[accumulate]\nmicro_batches = 4\n"),
        "accumulate.micro_batches",
    ),
    "micro_batches zero": (scalar_with(extra="[accumulate]\nmicro_batches = 0\n"), "accumulate.micro_batches"),
    "expect on an unknown variable": (scalar_with(extra='[expect]\n"grad.z" = 1.0\n'), "expect.grad.z"),
    "expect on data": (tensors("sum(a @ w)", '[expect]\n"a" = 1.0\n'), "expect.a"),
    "expect of the wrong shape": (tensors("sum(a @ w)", '[expect]\n"grad.w" = [1.0, 2.0]\n'), "expect.grad.w"),
    "expect to an unknown dtype": (
        scalar_with(extra='[expect]\n"x" = { value = 2.0, dtype = "float16" }\n'),
        "expect.x",
    ),
    "expect table without a value": (scalar_with(extra='[expect]\n"x" = { dtype = "float32" }\n'), "expect.x"),
    "empty title": ('title = ""\n' + scalar_with(), "title"),
    "tags not strings": ("tags = [1]\n" + scalar_with(), "tags"),
}


@pytest.mark.parametrize(("text", "field"), INVALID.values(), ids=INVALID.keys())
def test_an_invalid_case_is_one_line_naming_file_and_field(tmp_path, text, field):
    path = write(tmp_path / "bad.toml", text)
    error = case_error(path)
    message = str(error)
    assert error.field == field
    assert message.startswith(f"{path}: {field}: ") and len(message) > len(f"{path}: {field}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"[variables.x\nvalue = 1\n", "is not valid TOML"),
        (b'title = """never closed\n', "is not valid TOML"),
        (b"x = 1\nx = 2\n", "is not valid TOML"),
        (b'title = "caf\xe9"\n', "is not UTF-8 text"),
        (b"# " + b"a" * 70_000 + b"\n", "the limit is"),
    ],
)
def test_a_file_that_is_not_a_toml_document_is_one_line(tmp_path, raw, problem):
    path = tmp_path / "bad.toml"
    path.write_bytes(raw)
    message = str(case_error(path))
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


# Bugs found while writing these tests, each now a one-line CaseError naming the field (the comment: what it was).
FOUND_GAPS = {
    "shape that is not a list, next to a value": (
        '[variables.x]\nvalue = 2.0\nshape = 3\n[loss]\nexpr = "x"\n',
        "variables.x.shape",
    ),  # TypeError: 'int' object is not iterable
    "newline in a variable name": ('[variables."a\\nb"]\nvalue = 1.0\n[loss]\nexpr = "x"\n', "variables."),
    "newline in a top-level key": ('"a\\nb" = 1\n' + scalar_with(), ""),
    "deeply nested TOML": ("x = " + "[" * 5000 + "]" * 5000 + "\n", ""),  # tomllib's RecursionError escapes
    "boolean tensor value": ('[variables.x]\nvalue = true\n[loss]\nexpr = "x"\n', "variables.x.value"),  # loads as 1.0
    "broadcast blow-up": (
        "".join(
            f"[variables.{name}]\nshape = {shape}\nrange = [-1.0, 1.0]\n"
            for name, shape in [("p", [64, 1, 1]), ("q", [1, 64, 1]), ("r", [1, 1, 64])]
        )
        + '[loss]\nexpr = "sum(p * q * r)"\n',
        "loss.expr",
    ),  # 262144 symbolic elements: SymPy hangs
}


@pytest.mark.parametrize(("text", "field"), FOUND_GAPS.values(), ids=FOUND_GAPS.keys())
def test_found_gaps_are_one_line_case_errors(tmp_path, text, field):
    path = write(tmp_path / "bad.toml", text)
    message = str(case_error(path))
    assert message.startswith(f"{path}: {field}") and "\n" not in message


# ------------------------------------------------------------------------------------------- the shipped cases


@pytest.fixture(scope="module")
def shipped():
    return load_cases([SHIPPED])


def test_every_shipped_case_loads(shipped):
    files = sorted(SHIPPED.rglob("*.toml"))
    assert len(shipped) == len(files) > 0
    assert {case.id for case in shipped} == {file.relative_to(SHIPPED).with_suffix("").as_posix() for file in files}


def test_shipped_cases_cover_the_language(shipped):
    """Every function, matmul, an axis reduction, scalar, vector and matrix variables and data tensors."""
    assert set().union(*(functions_used(case.loss) for case in shipped)) == set(FUNCTIONS)
    assert any(_any_node(case.loss, lambda n: isinstance(n, Binary) and n.op == "@") for case in shipped)
    assert any(_any_node(case.loss, lambda n: isinstance(n, Call) and n.axis is not None) for case in shipped)
    ranks = {len(spec.shape) for case in shipped for spec in case.variables}
    assert {0, 1, 2} <= ranks
    assert any(case.data for case in shipped)


def test_the_seed_case_is_the_articles(shipped):
    (seed,) = [case for case in shipped if case.id == "seed/linear-square"]
    assert float(seed.variables[0].value) == 2.0
    assert {key: float(np.asarray(value)) for key, value in seed.expect.items()} == {"grad.x": 6.0, "x": 2.0}


def _any_node(node, predicate) -> bool:
    match node:
        case Binary(left=left, right=right):
            children = (left, right)
        case Call(args=args):
            children = args
        case Negate(operand=operand):
            children = (operand,)
        case _:
            children = ()
    return predicate(node) or any(_any_node(child, predicate) for child in children)
