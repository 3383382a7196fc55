"""The loss expression language: a small subset of Python expression syntax, parsed and never evaluated.

A case's `expr` is read with `ast.parse` and then rebuilt, node by node, into the tree below; anything outside
the whitelist (attributes, subscripts, calls to unknown names, keywords a function does not take, strings other
than a loss function's `reduction`, comparisons, lambdas...) is an `ExpressionError`. The tree is lowered to every
target (each framework, the SymPy reference, a source-code printer for reproducers) by `lower`, with one function
table for all.
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

MAX_SOURCE_CHARS = 4000
MAX_NODES = 400
MAX_DEPTH = 40
MAX_ABS_EXPONENT = 16
MAX_ABS_LITERAL = 1e30
MAX_AXES = 4  # of any value: a case's tensors have at most 4, and no operation adds one


class ExpressionError(ValueError):
    """The expression is outside the language; the message says where and why."""


@dataclass(frozen=True)
class Keyword:
    """A keyword a function takes besides `axis`: a number literal in [low, high] (above low where `low_open`), or
    one of the strings `choices`; a call that leaves it out gets `default`."""

    name: str
    default: float | str
    low: float = -MAX_ABS_LITERAL
    high: float = MAX_ABS_LITERAL
    low_open: bool = False
    choices: tuple[str, ...] = ()


REDUCTION = Keyword("reduction", "mean", choices=("mean", "sum"))


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    arity: int
    takes_axis: bool
    doc: str
    axis_default: int | None = None  # the axis a call without `axis` acts on; None: every element
    keywords: tuple[Keyword, ...] = ()
    loss: bool = False  # a framework's loss function: (predictions, targets), the targets data, equal shapes


def _loss(name: str, doc: str, *keywords: Keyword, axis_default: int | None = None) -> FunctionSpec:
    return FunctionSpec(name, 2, axis_default is not None, doc, axis_default, (*keywords, REDUCTION), loss=True)


FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in [
        FunctionSpec("sum", 1, True, "sum of the elements, over `axis` or all of them"),
        FunctionSpec("mean", 1, True, "mean of the elements, over `axis` or all of them"),
        FunctionSpec("logsumexp", 1, True, "log(sum(exp(a))), computed stably by every target"),
        FunctionSpec("exp", 1, False, "e ** a"),
        FunctionSpec("log", 1, False, "natural logarithm"),
        FunctionSpec("sqrt", 1, False, "square root"),
        FunctionSpec("abs", 1, False, "absolute value; its slope at 0 is a per-framework convention"),
        FunctionSpec("tanh", 1, False, "hyperbolic tangent"),
        FunctionSpec("sigmoid", 1, False, "1 / (1 + exp(-a))"),
        FunctionSpec("softplus", 1, False, "log(1 + exp(a)), computed stably by every target"),
        FunctionSpec("relu", 1, False, "max(a, 0); slope 0 at 0 in every framework"),
        FunctionSpec("square", 1, False, "a * a"),
        FunctionSpec("maximum", 2, False, "elementwise maximum with broadcasting; ties are a convention"),
        FunctionSpec("minimum", 2, False, "elementwise minimum with broadcasting; ties are a convention"),
        _loss(
            "cross_entropy",
            "softmax cross-entropy of logits against target probabilities along `axis`, the targets smoothed",
            Keyword("label_smoothing", 0.0, low=0.0, high=1.0),
            axis_default=-1,
        ),
        _loss("binary_cross_entropy_with_logits", "binary cross-entropy of sigmoid(logits), elementwise"),
        _loss("binary_cross_entropy", "binary cross-entropy of probabilities, elementwise, as each framework clamps"),
        _loss(
            "huber",
            "0.5 e^2 where |e| <= delta, else delta (|e| - delta / 2)",
            Keyword("delta", 1.0, 0.0, low_open=True),
        ),
        _loss("mse", "the squared error, elementwise"),
        _loss("kl_divergence", "sum of targets * (log(targets) - log_predictions) over the last axis"),
    ]
}

BINARY_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.MatMult: "@"}


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Name:
    id: str


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]
    axis: int | None = None
    options: tuple[tuple[str, float | str], ...] = ()  # every keyword of the function but axis, defaults filled


Node = Number | Name | Negate | Binary | Call


def parse(source: str, names: set[str] | frozenset[str]) -> Node:
    """Parse `source` into a tree whose free names all lie in `names`; raise ExpressionError otherwise."""
    if not isinstance(source, str):
        raise ExpressionError("must be a string")
    if len(source) > MAX_SOURCE_CHARS:
        raise ExpressionError(f"is {len(source)} characters long; the limit is {MAX_SOURCE_CHARS}")
    if not source.strip():
        raise ExpressionError("is empty")
    foreign = next((character for character in source if not character.isascii()), None)
    if foreign is not None:  # Python folds names to NFKC: `ｘ` would silently be `x`
        raise ExpressionError(f"uses the character {foreign!r} (U+{ord(foreign):04X}); the language is ASCII")
    try:
        with warnings.catch_warnings():  # a SyntaxWarning ("invalid decimal literal") would reach stderr
            warnings.simplefilter("ignore")
            tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        detail = getattr(error, "msg", None) or type(error).__name__
        raise ExpressionError(f"is not a valid expression ({detail})") from None
    node_count = sum(1 for _ in ast.walk(tree))
    if node_count > MAX_NODES:
        raise ExpressionError(f"has {node_count} syntax nodes; the limit is {MAX_NODES}")
    return _Builder(frozenset(names)).build(tree.body, depth=0)


class _Builder:
    def __init__(self, names: frozenset[str]):
        self.names = names

    def build(self, node: ast.AST, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"nests deeper than {MAX_DEPTH} levels")
        match node:
            case ast.Constant(value=bool()):
                raise ExpressionError("uses a boolean; only numbers are allowed")
            case ast.Constant(value=int() | float() as value):
                return Number(_checked_literal(value))
            case ast.Constant(value=value):
                raise ExpressionError(f"uses the literal {value!r:.40}; only numbers are allowed")
            case ast.Name(id=name):
                if name in FUNCTIONS:
                    raise ExpressionError(f"uses the function {name!r} without calling it")
                if name not in self.names:
                    known = ", ".join(sorted(self.names)) or "none"
                    raise ExpressionError(f"uses the unknown name {name!r} (variables and data: {known})")
                return Name(name)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                inner = self.build(operand, depth + 1)
                return Number(-inner.value) if isinstance(inner, Number) else Negate(inner)
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return self.build(operand, depth + 1)
            case ast.BinOp(op=op, left=left, right=right) if type(op) in BINARY_OPERATORS:
                symbol = BINARY_OPERATORS[type(op)]
                if symbol == "**":
                    built = Binary("**", self.build(left, depth + 1), self._exponent(right, depth + 1))
                else:
                    built = Binary(symbol, self.build(left, depth + 1), self.build(right, depth + 1))
                return _folded(built)
            case ast.Call(func=ast.Name(id=name), args=args, keywords=keywords):
                return self._call(name, args, keywords, depth)
            case ast.Call():
                raise ExpressionError("calls something other than a function of the table")
            case ast.Attribute():
                raise ExpressionError("uses attribute access ('.'), which the language does not have")
            case ast.Subscript():
                raise ExpressionError("uses indexing ('[...]'), which the language does not have")
            case _:
                raise ExpressionError(f"uses {type(node).__name__}, which the language does not have")

    def _exponent(self, node: ast.AST, depth: int) -> Number:
        exponent = self.build(node, depth)
        if not isinstance(exponent, Number):
            raise ExpressionError("has an exponent that is not a number literal")
        if abs(exponent.value) > MAX_ABS_EXPONENT:
            raise ExpressionError(f"has the exponent {exponent.value:g}; the limit is {MAX_ABS_EXPONENT}")
        return exponent

    def _call(self, name: str, args: list[ast.AST], keywords: list[ast.keyword], depth: int) -> Call:
        spec = FUNCTIONS.get(name)
        if spec is None:
            raise ExpressionError(f"calls the unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
        if len(args) != spec.arity:
            raise ExpressionError(f"calls {name} with {len(args)} arguments; it takes {spec.arity}")
        axis, given, seen = spec.axis_default, {}, set()
        taken = {keyword.name: keyword for keyword in spec.keywords}
        for keyword in keywords:
            if keyword.arg in seen:
                raise ExpressionError(f"calls {name} with the keyword {keyword.arg!r} twice")
            seen.add(keyword.arg)
            if keyword.arg == "axis" and spec.takes_axis:
                axis = self._axis(name, keyword.value, depth)
            elif keyword.arg in taken:
                given[keyword.arg] = self._keyword(name, taken[keyword.arg], keyword.value, depth)
            else:
                raise ExpressionError(f"calls {name} with the keyword {keyword.arg!r}, which it does not take")
        options = tuple((keyword.name, given.get(keyword.name, keyword.default)) for keyword in spec.keywords)
        return Call(name, tuple(self.build(arg, depth + 1) for arg in args), axis, options)

    def _axis(self, name: str, node: ast.AST, depth: int) -> int:
        value = self.build(node, depth + 1)
        if not isinstance(value, Number) or value.value != int(value.value):
            raise ExpressionError(f"calls {name} with an axis that is not an integer literal")
        if not -MAX_AXES <= value.value < MAX_AXES:
            raise ExpressionError(f"calls {name} with axis={value.value:g}; a value has at most {MAX_AXES} axes")
        return int(value.value)

    def _keyword(self, name: str, keyword: Keyword, node: ast.AST, depth: int) -> float | str:
        if keyword.choices:
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keyword.choices):
                shown = " or ".join(repr(choice) for choice in keyword.choices)
                raise ExpressionError(f"calls {name} with a {keyword.name} that is not {shown}")
            return node.value
        value = self.build(node, depth + 1)
        if not isinstance(value, Number):
            raise ExpressionError(f"calls {name} with a {keyword.name} that is not a number literal")
        above_low = value.value > keyword.low if keyword.low_open else value.value >= keyword.low
        if not (above_low and value.value <= keyword.high):
            opening = "(" if keyword.low_open else "["
            raise ExpressionError(
                f"calls {name} with {keyword.name}={value.value:g}; it must lie in {opening}{keyword.low:g}, "
                f"{keyword.high:g}]"
            )
        return value.value


def _checked_literal(value: int | float) -> float:
    if isinstance(value, int) and abs(value) > MAX_ABS_LITERAL:
        raise ExpressionError(f"has a literal larger than {MAX_ABS_LITERAL:g}")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_ABS_LITERAL:
        raise ExpressionError(f"has a literal larger than {MAX_ABS_LITERAL:g}")
    return number


def _folded(node: Binary) -> Node:
    """Fold `number op number` at parse time, so that an overflowing constant is a parse error."""
    if not (isinstance(node.left, Number) and isinstance(node.right, Number)) or node.op == "@":
        return node
    try:
        value = _OPERATORS_ON_FLOATS[node.op](node.left.value, node.right.value)
    except (OverflowError, ZeroDivisionError, ValueError) as error:
        raise ExpressionError(f"has a constant that cannot be computed ({error})") from None
    if isinstance(value, complex):
        raise ExpressionError("has a constant power with a complex value")
    return Number(_checked_literal(value))


_OPERATORS_ON_FLOATS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": lambda a, b: a**b,
}


def names_used(node: Node) -> set[str]:
    """The variable and data names that occur in the tree."""
    match node:
        case Name(id=name):
            return {name}
        case Negate(operand=operand):
            return names_used(operand)
        case Binary(left=left, right=right):
            return names_used(left) | names_used(right)
        case Call(args=args):
            return set().union(*(names_used(arg) for arg in args))
    return set()


def calls(node: Node) -> list[Call]:
    """Every call in the tree, outermost first."""
    match node:
        case Negate(operand=operand):
            return calls(operand)
        case Binary(left=left, right=right):
            return calls(left) + calls(right)
        case Call(args=args):
            return [node] + [call for arg in args for call in calls(arg)]
    return []


def functions_used(node: Node) -> set[str]:
    """The function names that occur in the tree (used to check that the cases cover the table)."""
    match node:
        case Negate(operand=operand):
            return functions_used(operand)
        case Binary(left=left, right=right):
            return functions_used(left) | functions_used(right)
        case Call(function=function, args=args):
            return {function}.union(*(functions_used(arg) for arg in args))
    return set()


class Target(Protocol):
    """What a lowering needs: constants, operators and one method per function of the table."""

    def constant(self, value: float) -> Any: ...
    def binary(self, op: str, left: Any, right: Any) -> Any: ...
    def negate(self, operand: Any) -> Any: ...
    def call(self, function: str, args: list[Any], axis: int | None, options: dict[str, Any]) -> Any: ...


class OperatorTarget:
    """A target whose arrays support Python's operators; functions are looked up as methods by name."""

    def constant(self, value: float) -> Any:
        return value

    def binary(self, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            exponent = int(right) if float(right).is_integer() else right
            return left**exponent
        return _OPERATORS[op](left, right)

    def negate(self, operand: Any) -> Any:
        return -operand

    def call(self, function: str, args: list[Any], axis: int | None, options: dict[str, Any]) -> Any:
        method = getattr(self, function)
        return method(*args, axis=axis, **options) if FUNCTIONS[function].takes_axis else method(*args, **options)


_OPERATORS = {**_OPERATORS_ON_FLOATS, "@": lambda a, b: a @ b}


def lower(node: Node, target: Target, env: dict[str, Any]) -> Any:
    """Evaluate the tree with `target`'s operations, names bound from `env`."""
    match node:
        case Number(value=value):
            return target.constant(value)
        case Name(id=name):
            return env[name]
        case Negate(operand=operand):
            return target.negate(lower(operand, target, env))
        case Binary(op="**", left=left, right=Number(value=exponent)):
            return target.binary("**", lower(left, target, env), exponent)
        case Binary(op=op, left=left, right=right):
            return target.binary(op, lower(left, target, env), lower(right, target, env))
        case Call(function=function, args=args, axis=axis, options=options):
            return target.call(function, [lower(arg, target, env) for arg in args], axis, dict(options))
    raise TypeError(f"not an expression node: {node!r}")
