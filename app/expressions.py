"""The safe formula language of custom activations, parsed without torch.

A formula is Python-expression syntax restricted by an allow-list over ``ast``: numbers,
the variable ``x``, named learnable scalars, constants, ``+ - * / **``, unary minus and the
functions of ``catalog.EXPRESSION_FUNCTIONS``. Nothing is ever evaluated with ``eval`` or
``exec``: the parsed tree is a small dataclass tree that the worker turns into torch ops.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass

from app.catalog import EXPRESSION_CONSTANTS, EXPRESSION_FUNCTIONS

BINARY_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}
UNARY_OPERATORS: dict[type[ast.unaryop], str] = {ast.USub: "-", ast.UAdd: "+"}
MAX_NODES = 200


class ExpressionError(ValueError):
    """A formula outside the allowed language; the message names the offending part."""


@dataclass(frozen=True)
class Number:
    """A numeric literal."""

    value: float


@dataclass(frozen=True)
class Variable:
    """The input ``x`` or a learnable scalar."""

    name: str


@dataclass(frozen=True)
class UnaryOperation:
    """Unary minus or plus."""

    operator: str
    operand: Node


@dataclass(frozen=True)
class BinaryOperation:
    """One of + - * / **."""

    operator: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    """A call of an allowed function."""

    function: str
    arguments: tuple[Node, ...]


Node = Number | Variable | UnaryOperation | BinaryOperation | Call


def _describe(node: ast.AST, text: str) -> str:
    segment = ast.get_source_segment(text, node)
    return repr(segment) if segment else type(node).__name__


def parse_expression(text: str, learnable: Iterable[str] = ()) -> Node:
    """Parse a custom activation formula into a tree, or raise ExpressionError."""
    learnable_names = set(learnable)
    for name in learnable_names:
        if not name.isidentifier() or name == "x" or name in EXPRESSION_FUNCTIONS or name in EXPRESSION_CONSTANTS:
            raise ExpressionError(f"learnable scalar name {name!r} is not allowed (must be a new identifier)")
    # Parse and describe the same (stripped) text, or error excerpts point at the wrong columns.
    text = text.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"syntax error in expression at column {error.offset}: {error.msg}") from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise ExpressionError(f"expression cannot be parsed: {error}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExpressionError(f"expression has more than {MAX_NODES} syntax nodes")
    seen_x = False

    def convert(node: ast.AST) -> Node:
        nonlocal seen_x
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ExpressionError(f"only numbers are allowed as constants, not {_describe(node, text)}")
            try:
                return Number(float(node.value))
            except OverflowError:
                raise ExpressionError(f"number {_describe(node, text)} is too large") from None
        if isinstance(node, ast.Name):
            if node.id == "x":
                seen_x = True
                return Variable("x")
            if node.id in learnable_names:
                return Variable(node.id)
            if node.id in EXPRESSION_CONSTANTS:
                return Number(EXPRESSION_CONSTANTS[node.id])
            allowed = ", ".join(["x", *sorted(learnable_names), *sorted(EXPRESSION_CONSTANTS)])
            raise ExpressionError(f"unknown name {node.id!r}; allowed names: {allowed}")
        if isinstance(node, ast.BinOp):
            operator = BINARY_OPERATORS.get(type(node.op))
            if operator is None:
                raise ExpressionError(f"operator in {_describe(node, text)} is not allowed; allowed: + - * / **")
            return BinaryOperation(operator, convert(node.left), convert(node.right))
        if isinstance(node, ast.UnaryOp):
            operator = UNARY_OPERATORS.get(type(node.op))
            if operator is None:
                raise ExpressionError(f"unary operator in {_describe(node, text)} is not allowed; allowed: - +")
            return UnaryOperation(operator, convert(node.operand))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ExpressionError(f"call of {_describe(node.func, text)} is not allowed; only plain function names")
            name = node.func.id
            if name not in EXPRESSION_FUNCTIONS:
                allowed = ", ".join(sorted(EXPRESSION_FUNCTIONS))
                raise ExpressionError(f"unknown function {name!r}; allowed functions: {allowed}")
            if node.keywords:
                raise ExpressionError(f"keyword arguments in {_describe(node, text)} are not allowed")
            arity = EXPRESSION_FUNCTIONS[name]
            if len(node.args) != arity:
                raise ExpressionError(f"function {name!r} takes {arity} argument(s), got {len(node.args)}")
            return Call(name, tuple(convert(argument) for argument in node.args))
        kind = {
            ast.Attribute: "attribute access",
            ast.Subscript: "subscripts",
            ast.Lambda: "lambdas",
            ast.ListComp: "comprehensions",
            ast.SetComp: "comprehensions",
            ast.DictComp: "comprehensions",
            ast.GeneratorExp: "comprehensions",
            ast.Compare: "comparisons",
            ast.BoolOp: "boolean operators",
            ast.IfExp: "conditional expressions",
            ast.NamedExpr: "assignments",
        }.get(type(node), "this syntax")
        raise ExpressionError(f"{kind} ({_describe(node, text)}) not allowed in an activation expression")

    result = convert(tree.body)
    if not seen_x:
        raise ExpressionError("expression must use the input variable 'x'")
    return result


def variables(node: Node) -> set[str]:
    """Names of the variables a tree reads."""
    if isinstance(node, Variable):
        return {node.name}
    if isinstance(node, UnaryOperation):
        return variables(node.operand)
    if isinstance(node, BinaryOperation):
        return variables(node.left) | variables(node.right)
    if isinstance(node, Call):
        return set().union(*(variables(argument) for argument in node.arguments))
    return set()
