"""Case files: TOML in, validated `Case` objects out, or a `CaseError` that names the file and the field."""

from __future__ import annotations

import hashlib
import keyword
import math
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from conformance import expressions
from conformance.numpy_target import TooLarge, result_shape

SHIPPED = Path(__file__).resolve().parent / "shipped_cases"  # the cases that come with the package
RULES = (
    "sgd",
    "momentum",
    "nesterov",
    "adam",
    "adamw",
    "amsgrad",
    "rmsprop",
    "adagrad",
    "adamax",
    "adadelta",
    "nadam",
    "radam",
    "lion",
)
# gradient clipping before any rule: the global norm, each variable's norm, each element; a case gives one at most
CLIPPING = ("clip_norm", "clip_norm_per_variable", "clip_value")
HYPERPARAMETERS = (
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "amsgrad",
    "momentum",
    "nesterov",
    "dampening",
    "rho",
    "centered",
    "initial_accumulator",
    "momentum_decay",
    *CLIPPING,
)
BOOLEAN_HYPERPARAMETERS = ("amsgrad", "nesterov", "centered")
# a learning-rate schedule's kind -> (its required fields, its optional fields with their defaults)
SCHEDULES = {
    "exponential": (("decay_rate", "decay_steps"), {"staircase": False}),
    "cosine": (("decay_steps",), {"alpha": 0.0}),
    "warmup_cosine": (("warmup_steps", "decay_steps", "peak"), {"alpha": 0.0}),
    "piecewise": (("boundaries", "values"), {}),
}
MAX_SCHEDULE_STEPS = 10_000
MAX_BOUNDARIES = 8
GOLDEN_DTYPES = ("float32", "float64")
MAX_AXES = expressions.MAX_AXES
MAX_ELEMENTS = 256  # the reference differentiates element by element; beyond this SymPy gets slow
MAX_STEPS = 50
MAX_FILE_BYTES = 64_000
TOP_LEVEL_KEYS = {"id", "title", "tags", "variables", "data", "loss", "update", "accumulate", "expect"}


class CaseError(ValueError):
    """An invalid case file; str() is one line: `path: field: problem`."""

    def __init__(self, path: Path | str, field_name: str, problem: str):
        self.path, self.field, self.problem = str(path), field_name, problem
        super().__init__(_one_line(f"{path}: {field_name}: {problem}" if field_name else f"{path}: {problem}"))


def _as_float(number: int | float) -> float:
    """A TOML number as a float; an integer beyond float64's range is an infinity, which finiteness checks catch."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _one_line(text: str) -> str:
    """Control characters (a newline in a quoted TOML key, in a file name) escaped, so the message stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True)
class TensorSpec:
    """A variable (trainable) or data tensor: a fixed value, or a shape and a closed range to draw from."""

    name: str
    trainable: bool
    shape: tuple[int, ...]
    value: np.ndarray | None = None
    range: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class HyperParameter:
    name: str
    value: float | bool | None = None
    range: tuple[float, float] | None = None
    log: bool = False


@dataclass(frozen=True)
class Schedule:
    """`[update] schedule`: the learning rate of each step from the case's lr (the value at step 0; a piecewise
    schedule's values are the learning rates themselves). Fixed in the case file, never drawn. Only the fields of
    its kind mean anything (SCHEDULES); docs/case-format.md defines each kind."""

    kind: str
    decay_steps: int = 1
    decay_rate: float = 1.0
    staircase: bool = False
    alpha: float = 0.0
    warmup_steps: int = 0
    peak: float = 0.0
    boundaries: tuple[int, ...] = ()
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class UpdateSpec:
    rule: str
    steps: int
    hyperparameters: dict[str, HyperParameter]
    schedule: Schedule | None = None


@dataclass(frozen=True, eq=False)
class Case:
    """One validated case file; compared and hashed by identity, since cases are loaded once per process."""

    id: str
    path: str
    title: str
    tags: tuple[str, ...]
    variables: tuple[TensorSpec, ...]
    data: tuple[TensorSpec, ...]
    loss_source: str
    loss: expressions.Node = field(compare=False)
    update: UpdateSpec | None = None
    micro_batches: int | None = None
    expect: dict[str, np.ndarray] = field(default_factory=dict, compare=False)
    expect_dtypes: dict[str, str] = field(
        default_factory=dict, compare=False
    )  # a golden stated to one dtype's precision
    digest: str = ""  # of the file's bytes: two runs compare observations only of the same case file

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.variables + self.data

    @property
    def variable_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.variables)

    def goldens(self, dtype: str) -> dict[str, np.ndarray]:
        """The [expect] values that hold in `dtype`: all but those stated to another dtype's precision only."""
        return {key: value for key, value in self.expect.items() if self.expect_dtypes.get(key, dtype) == dtype}


def load_case(path: Path, root: Path | None = None) -> Case:
    """Read and validate one case file; `root` is the directory ids are relative to."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block, a link to /dev/zero would never end
            raise CaseError(path, "", "is not a regular file")
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise CaseError(path, "", f"cannot be read ({error.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CaseError(path, "", f"is too long: the limit is {MAX_FILE_BYTES} bytes")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CaseError(path, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise CaseError(path, "", f"is not valid TOML ({error})") from None
    except ValueError:  # int() refuses the literal: Python's limit on the digits of an integer
        raise CaseError(path, "", "is not valid TOML (an integer literal has too many digits)") from None
    except RecursionError:
        raise CaseError(path, "", "nests arrays or tables too deeply to be read") from None
    default_id = path.with_suffix("").relative_to(root).as_posix() if root else path.stem
    return replace(_CaseReader(path, document).read(default_id), digest=hashlib.sha256(raw).hexdigest()[:16])


def load_cases(directories: list[Path]) -> list[Case]:
    """Every `*.toml` under the directories, sorted by id; ids must be unique across directories."""
    cases: dict[str, Case] = {}
    for directory in directories:
        directory = Path(directory)
        if directory.is_file():
            files, root = [directory], directory.parent
        elif directory.is_dir():
            files, root = sorted(directory.rglob("*.toml")), directory
        else:
            raise CaseError(directory, "", "is neither a case file nor a directory of cases")
        for file in files:
            case = load_case(file, root)
            if case.id in cases:
                raise CaseError(file, "id", f"{case.id!r} is also the id of {cases[case.id].path}")
            cases[case.id] = case
    return [cases[key] for key in sorted(cases)]


class _CaseReader:
    def __init__(self, path: Path, document: dict[str, Any]):
        self.path, self.document = path, document

    def fail(self, field_name: str, problem: str) -> CaseError:
        return CaseError(self.path, field_name, problem)

    def read(self, default_id: str) -> Case:
        unknown = set(self.document) - TOP_LEVEL_KEYS
        if unknown:
            raise self.fail(sorted(unknown)[0], f"is not a case field (fields: {', '.join(sorted(TOP_LEVEL_KEYS))})")
        case_id = self._string("id", default_id)
        variables = self._tensors("variables", trainable=True)
        if not variables:
            raise self.fail("variables", "is missing: a case needs at least one trainable variable")
        data = self._tensors("data", trainable=False)
        variable_names = {spec.name for spec in variables}
        for spec in data:
            if spec.name in variable_names:
                raise self.fail(f"data.{spec.name}", "has the name of a variable; names must be unique")
        if sum(spec.size for spec in variables + data) > MAX_ELEMENTS:
            raise self.fail("variables", f"variables and data hold more than {MAX_ELEMENTS} elements together")
        tensors = {spec.name: spec for spec in variables + data}
        loss_source, loss = self._loss(tensors)
        micro_batches = self._accumulate(data)
        expect, expect_dtypes = self._expect(tensors)
        return Case(
            id=case_id,
            path=str(self.path),
            title=self._string("title", case_id),
            tags=tuple(self._tags()),
            variables=variables,
            data=data,
            loss_source=loss_source,
            loss=loss,
            update=self._update(),
            micro_batches=micro_batches,
            expect=expect,
            expect_dtypes=expect_dtypes,
        )

    def _string(self, key: str, default: str) -> str:
        value = self.document.get(key, default)
        if not isinstance(value, str) or not value.strip() or len(value) > 300 or not value.isprintable():
            raise self.fail(key, "must be a non-empty line of at most 300 printable characters")
        return value

    def _tags(self) -> list[str]:
        tags = self.document.get("tags", [])
        if not isinstance(tags, list) or not all(
            isinstance(tag, str) and 0 < len(tag) <= 60 and tag.isprintable() for tag in tags
        ):
            raise self.fail("tags", "must be a list of short printable strings")
        return tags

    def _table(self, key: str) -> dict[str, Any]:
        table = self.document.get(key, {})
        if not isinstance(table, dict):
            raise self.fail(key, "must be a table")
        return table

    def _tensors(self, key: str, trainable: bool) -> tuple[TensorSpec, ...]:
        specs = []
        for name, entry in self._table(key).items():
            where = f"{key}.{name}"
            if (
                not name.isidentifier()
                or not name.isascii()
                or keyword.iskeyword(name)
                or name in expressions.FUNCTIONS
            ):
                raise self.fail(where, "the name must be an ASCII identifier, not a keyword or a function of the table")
            if not isinstance(entry, dict):
                raise self.fail(where, "must be a table with `value`, or `shape` and `range`")
            specs.append(self._tensor(where, name, entry, trainable))
        return tuple(specs)

    def _tensor(self, where: str, name: str, entry: dict[str, Any], trainable: bool) -> TensorSpec:
        extra = set(entry) - {"value", "shape", "range"}
        if extra:
            raise self.fail(f"{where}.{sorted(extra)[0]}", "is not a tensor field (value, shape, range)")
        if "value" in entry:
            if "range" in entry:
                raise self.fail(where, "has both `value` and `range`; give one")
            value = self._array(f"{where}.value", entry["value"])
            if "shape" in entry and self._shape(f"{where}.shape", entry["shape"]) != value.shape:
                raise self.fail(f"{where}.shape", f"is {entry['shape']} but the value has shape {list(value.shape)}")
            return TensorSpec(name, trainable, value.shape, value=value)
        if "shape" not in entry or "range" not in entry:
            raise self.fail(where, "needs `value`, or both `shape` and `range`")
        return TensorSpec(
            name,
            trainable,
            self._shape(f"{where}.shape", entry["shape"]),
            range=self._range(f"{where}.range", entry["range"]),
        )

    def _array(self, where: str, value: Any) -> np.ndarray:
        try:
            array = np.array(value, dtype=np.float64)
        except OverflowError:
            raise self.fail(where, "must be finite (an integer is beyond the range of float64)") from None
        except (ValueError, TypeError):
            raise self.fail(where, "must be a number or a rectangular nested list of numbers") from None
        if not 0 < array.size <= MAX_ELEMENTS or array.ndim > MAX_AXES:
            raise self.fail(where, f"must have from 1 to {MAX_ELEMENTS} elements and at most {MAX_AXES} axes")
        if not all(type(item) in (int, float) for item in np.array(value, dtype=object).ravel()):
            raise self.fail(where, "must be numbers; strings, true and false are not")
        if not np.all(np.isfinite(array)):
            raise self.fail(where, "must be finite")
        return array

    def _shape(self, where: str, shape: Any) -> tuple[int, ...]:
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_AXES
            or not all(type(n) is int and 1 <= n <= MAX_ELEMENTS for n in shape)
        ):
            raise self.fail(where, f"must be a list of at most {MAX_AXES} positive integers")
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.fail(where, f"has {math.prod(shape)} elements; the limit is {MAX_ELEMENTS}")
        return tuple(shape)

    def _range(self, where: str, bounds: Any) -> tuple[float, float]:
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        ):
            raise self.fail(where, "must be a list of two numbers [low, high]")
        low, high = _as_float(bounds[0]), _as_float(bounds[1])
        if not (math.isfinite(low) and math.isfinite(high)):
            raise self.fail(where, "must be finite")
        if low > high:
            raise self.fail(where, f"is empty: low {low:g} is above high {high:g}")
        return low, high

    def _loss(self, tensors: dict[str, TensorSpec]) -> tuple[str, expressions.Node]:
        table = self._table("loss")
        if set(table) != {"expr"}:
            raise self.fail("loss", "must be a table with exactly one field, `expr`")
        source = table["expr"]
        try:
            tree = expressions.parse(source, frozenset(tensors))
        except expressions.ExpressionError as error:
            raise self.fail("loss.expr", str(error)) from None
        trainable = {name for name, spec in tensors.items() if spec.trainable}
        if not expressions.names_used(tree) & trainable:
            raise self.fail("loss.expr", "uses no trainable variable, so there is nothing to differentiate")
        for call in expressions.calls(tree):
            if expressions.FUNCTIONS[call.function].loss and expressions.names_used(call.args[1]) & trainable:
                used = ", ".join(sorted(expressions.names_used(call.args[1]) & trainable))
                raise self.fail(
                    "loss.expr",
                    f"gives {call.function} targets that depend on the variable {used}; a loss function's targets "
                    "are data (the frameworks differentiate it in its predictions)",
                )
        try:
            shape = result_shape(tree, {name: spec.shape for name, spec in tensors.items()})
        except TooLarge as error:
            raise self.fail("loss.expr", str(error)) from None
        except (ValueError, IndexError, TypeError) as error:
            raise self.fail("loss.expr", f"shapes do not fit ({str(error).splitlines()[0][:200]})") from None
        if shape != ():
            raise self.fail("loss.expr", f"must be a scalar, but has shape {list(shape)} (reduce it with sum or mean)")
        return source, tree

    def _update(self) -> UpdateSpec | None:
        if "update" not in self.document:
            return None
        table = dict(self._table("update"))
        rule = table.pop("rule", None)
        if rule not in RULES:
            raise self.fail("update.rule", f"must be one of {', '.join(RULES)}")
        steps = table.pop("steps", 1)
        if type(steps) is not int or not 1 <= steps <= MAX_STEPS:
            raise self.fail("update.steps", f"must be an integer from 1 to {MAX_STEPS}")
        hyperparameters = {}
        schedule = self._schedule(table.pop("schedule")) if "schedule" in table else None
        for name, value in table.items():
            if name not in HYPERPARAMETERS:
                raise self.fail(f"update.{name}", f"is not a canonical hyperparameter ({', '.join(HYPERPARAMETERS)})")
            hyperparameters[name] = self._hyperparameter(f"update.{name}", name, value)
        clips = [name for name in CLIPPING if name in hyperparameters]
        if len(clips) > 1:
            raise self.fail(
                f"update.{clips[1]}", f"a case clips one way only (Keras refuses two); it already gives {clips[0]}"
            )
        if schedule is not None:
            self._fit_schedule(schedule, hyperparameters)
        return UpdateSpec(rule, steps, hyperparameters, schedule)

    def _schedule(self, table: Any) -> Schedule:
        where = "update.schedule"
        if not isinstance(table, dict) or not isinstance(table.get("kind"), str) or table["kind"] not in SCHEDULES:
            raise self.fail(f"{where}.kind", f"a schedule is a table whose kind is one of {', '.join(SCHEDULES)}")
        required, optional = SCHEDULES[table["kind"]]
        for name in table:
            if name != "kind" and name not in required and name not in optional:
                fields = ", ".join((*required, *optional))
                raise self.fail(f"{where}.{name}", f"is not a field of a {table['kind']} schedule ({fields})")
        for name in required:
            if name not in table:
                raise self.fail(f"{where}.{name}", f"is missing: a {table['kind']} schedule needs it")
        fields = {**optional, **{name: value for name, value in table.items() if name != "kind"}}
        checked = {name: self._schedule_field(f"{where}.{name}", name, value) for name, value in fields.items()}
        if table["kind"] == "piecewise":
            boundaries, values = checked["boundaries"], checked["values"]
            if list(boundaries) != sorted(set(boundaries)):
                raise self.fail(f"{where}.boundaries", "must increase strictly")
            if len(values) != len(boundaries) + 1:
                raise self.fail(f"{where}.values", "must hold one learning rate more than there are boundaries")
        return Schedule(table["kind"], **checked)

    def _schedule_field(self, where: str, name: str, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name in ("decay_steps", "warmup_steps"):
            if type(value) is not int or not 1 <= value <= MAX_SCHEDULE_STEPS:
                raise self.fail(where, f"must be an integer from 1 to {MAX_SCHEDULE_STEPS}")
            return value
        if name == "staircase":
            if not isinstance(value, bool):
                raise self.fail(where, "must be true or false")
            return value
        if name == "boundaries":
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= MAX_BOUNDARIES
                or not all(type(b) is int and 1 <= b <= MAX_SCHEDULE_STEPS for b in value)
            ):
                raise self.fail(
                    where, f"must be a list of 1 to {MAX_BOUNDARIES} step counts from 1 to {MAX_SCHEDULE_STEPS}"
                )
            return tuple(value)
        if name == "values":
            if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(_as_float(v)) and v > 0
                for v in value
            ):
                raise self.fail(where, "must be a list of finite positive learning rates")
            return tuple(float(v) for v in value)
        if not number or not math.isfinite(_as_float(value)):
            raise self.fail(where, "must be a finite number")
        value = float(value)
        if name == "alpha" and not 0 <= value <= 1:
            raise self.fail(where, "must lie in [0, 1]: the fraction of the learning rate the cosine ends at")
        if name in ("decay_rate", "peak") and not value > 0:
            raise self.fail(where, "must be positive")
        return value

    def _fit_schedule(self, schedule: Schedule, hyperparameters: dict[str, HyperParameter]) -> None:
        """A piecewise schedule states its learning rates, the first of them the lr; the others start from the
        case's lr, and a warm-up rises from it to its peak."""
        lr = hyperparameters.get("lr")
        if schedule.kind == "piecewise":
            if lr is not None:
                raise self.fail("update.lr", "a piecewise schedule's values are the learning rates; give no lr")
            hyperparameters["lr"] = HyperParameter("lr", value=schedule.values[0])
        elif lr is None:
            raise self.fail("update.lr", f"a {schedule.kind} schedule starts from the lr; give it")
        elif schedule.kind == "warmup_cosine":
            low, high = lr.range or (lr.value, lr.value)
            if not 0 < low <= high <= schedule.peak:
                raise self.fail("update.lr", "a warm-up rises from the lr to its peak: give an lr in (0, peak]")

    def _hyperparameter(self, where: str, name: str, value: Any) -> HyperParameter:
        if name in BOOLEAN_HYPERPARAMETERS:
            if not isinstance(value, bool):
                raise self.fail(where, "must be true or false")
            return HyperParameter(name, value=value)
        if isinstance(value, dict):
            if (
                not set(value) <= {"range", "log"}
                or "range" not in value
                or not isinstance(value.get("log", False), bool)
            ):
                raise self.fail(where, "must be a number or { range = [low, high], log = true|false }")
            low, high = self._range(f"{where}.range", value["range"])
            log = value.get("log", False)
            if name in CLIPPING and low <= 0:
                raise self.fail(f"{where}.range", "must be positive: a clip threshold of 0 or less clips to nothing")
            if low < 0 or (log and low <= 0):
                raise self.fail(f"{where}.range", "must be non-negative, and positive on a log scale")
            return HyperParameter(name, range=(low, high), log=log)
        number = math.nan if isinstance(value, bool) or not isinstance(value, (int, float)) else _as_float(value)
        if name in CLIPPING and not (math.isfinite(number) and number > 0):
            raise self.fail(where, "must be a finite positive number (a clip threshold)")
        if not (math.isfinite(number) and number >= 0):
            raise self.fail(where, "must be a finite non-negative number")
        return HyperParameter(name, value=number)

    def _accumulate(self, data: tuple[TensorSpec, ...]) -> int | None:
        if "accumulate" not in self.document:
            return None
        table = self._table("accumulate")
        if set(table) != {"micro_batches"}:
            raise self.fail("accumulate", "must be a table with exactly one field, `micro_batches`")
        count = table["micro_batches"]
        if type(count) is not int or not 1 <= count <= 64:
            raise self.fail("accumulate.micro_batches", "must be an integer from 1 to 64")
        for spec in data:
            if not spec.shape or spec.shape[0] % count:
                raise self.fail(
                    "accumulate.micro_batches", f"{count} does not divide the leading axis of data.{spec.name}"
                )
        return count

    def _expect(self, tensors: dict[str, TensorSpec]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Golden values, and the dtype each is stated to where it holds only to that precision (`{ value, dtype }`)."""
        expected, dtypes = {}, {}
        for key, value in self._table("expect").items():
            name = key.removeprefix("grad.")
            if name not in tensors or not tensors[name].trainable:
                raise self.fail(f"expect.{key}", "must be `x` or `grad.x` for a trainable variable x of the case")
            if isinstance(value, dict):
                if set(value) != {"value", "dtype"} or value["dtype"] not in GOLDEN_DTYPES:
                    raise self.fail(
                        f"expect.{key}",
                        'must be a number, a nested list, or { value = ..., dtype = "float32" | "float64" }',
                    )
                value, dtypes[key] = value["value"], value["dtype"]
            array = self._array(f"expect.{key}", value)
            if array.shape not in ((), tensors[name].shape):
                raise self.fail(
                    f"expect.{key}", f"has shape {list(array.shape)}, the variable {list(tensors[name].shape)}"
                )
            expected[key] = array
        return expected, dtypes
