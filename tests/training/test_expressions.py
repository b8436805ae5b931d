"""The safe formula language of custom activations: what it accepts, what it rejects and how it says so."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from app.expressions import (
    MAX_NODES,
    BinaryOperation,
    Call,
    ExpressionError,
    Number,
    UnaryOperation,
    Variable,
    parse_expression,
    variables,
)
from app.spec import EXAMPLE_SPEC, ExperimentSpec

X = Variable("x")


@pytest.mark.parametrize(
    ("text", "learnable", "tree"),
    [
        (
            "x * sigmoid(1.702 * x)",
            (),
            BinaryOperation("*", X, Call("sigmoid", (BinaryOperation("*", Number(1.702), X),))),
        ),
        (
            "x * sigmoid(beta * x)",
            ("beta",),
            BinaryOperation("*", X, Call("sigmoid", (BinaryOperation("*", Variable("beta"), X),))),
        ),
        ("max(x, 0.1*x)", (), Call("max", (X, BinaryOperation("*", Number(0.1), X)))),
        # Python precedence: the power binds tighter than the unary minus.
        ("-x ** 2", (), UnaryOperation("-", BinaryOperation("**", X, Number(2.0)))),
        (
            "log(1 + exp(x))",
            (),
            Call("log", (BinaryOperation("+", Number(1.0), Call("exp", (X,))),)),
        ),
        ("  x * pi  ", (), BinaryOperation("*", X, Number(3.141592653589793))),
        ("+x / e", (), BinaryOperation("/", UnaryOperation("+", X), Number(2.718281828459045))),
    ],
)
def test_accepted_formulas_parse_to_the_expected_tree(text: str, learnable: tuple[str, ...], tree: Any) -> None:
    assert parse_expression(text, learnable) == tree


def test_variables_lists_x_and_learnable_scalars() -> None:
    tree = parse_expression("a * x + min(b, x) + pi", ["a", "b", "unused"])
    assert variables(tree) == {"x", "a", "b"}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("__import__('os')", ["unknown function", "'__import__'"]),
        ("x.real", ["attribute access", "'x.real'"]),
        ("().__class__", ["attribute access", "'().__class__'"]),
        ("x[0]", ["subscripts", "'x[0]'"]),
        ("(lambda: x)()", ["call of", "lambda: x"]),
        ("x + (lambda: 1)", ["lambdas", "'lambda: 1'"]),
        ("sum([x for x in range(3)])", ["unknown function", "'sum'"]),
        ("x + [x for _ in ()]", ["comprehensions", "'[x for _ in ()]'"]),
        ("x + (x for _ in ())", ["comprehensions", "(x for _ in ())"]),
        ("y * x", ["unknown name", "'y'", "allowed names: x"]),
        ("foo(x)", ["unknown function", "'foo'", "allowed functions"]),
        ("sigmoid(x=x)", ["keyword arguments", "'sigmoid(x=x)'"]),
        ("x > 0", ["comparisons", "'x > 0'"]),
        ("x * 'abc'", ["only numbers", "'abc'"]),
        ("x * b'abc'", ["only numbers", "b'abc'"]),
        ("x * True", ["only numbers", "True"]),
        ("x * 1j", ["only numbers", "1j"]),
        ("x if x else 0", ["conditional expressions", "'x if x else 0'"]),
        ("x and 1", ["boolean operators", "'x and 1'"]),
        ("not x", ["unary operator", "'not x'"]),
        ("x // 2", ["operator", "'x // 2'", "allowed: + - * / **"]),
        ("x % 2", ["operator", "'x % 2'"]),
        ("(y := x)", ["assignments", "y := x"]),
        ("max(x)", ["'max' takes 2 argument(s), got 1"]),
        ("exp(x, 1)", ["'exp' takes 1 argument(s), got 2"]),
        ("f'{x}'", ["this syntax"]),
        ("1 + 2", ["must use the input variable 'x'"]),
        ("x +", ["syntax error"]),
        ("x; import os", ["syntax error"]),
        ("", ["syntax error"]),
    ],
)
def test_rejected_formulas_name_the_offending_part(text: str, fragments: list[str]) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_excerpts_point_at_the_right_text_despite_surrounding_whitespace() -> None:
    # Regression: the excerpt was cut from the unstripped text, e.g. "'  x.re'".
    with pytest.raises(ExpressionError, match=r"\('x\.real'\)"):
        parse_expression("  x.real")
    with pytest.raises(ExpressionError, match=r"\('x\[0\]'\)"):
        parse_expression("\n x[0] ")


def test_a_number_too_large_for_a_float_is_an_expression_error() -> None:
    # Regression: float() raised OverflowError, which pydantic does not turn into a validation error.
    with pytest.raises(ExpressionError, match="too large"):
        parse_expression("1" + "0" * 400 + " * x")


def test_expressions_are_bounded_in_size() -> None:
    with pytest.raises(ExpressionError, match=f"more than {MAX_NODES}"):
        parse_expression(" + ".join(["x"] * 120))


@pytest.mark.parametrize("name", ["x", "sigmoid", "pi", "1beta", "a-b", ""])
def test_learnable_names_must_be_new_identifiers(name: str) -> None:
    with pytest.raises(ExpressionError, match="learnable scalar name"):
        parse_expression("x", [name])


def spec_with(activation: Any) -> dict[str, Any]:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["activations"][2] = activation
    return spec


@pytest.mark.parametrize(
    ("activation", "fragment"),
    [
        ({"name": "custom", "expression": "__import__('os')"}, "'__import__'"),
        ({"name": "custom", "expression": "x.real"}, "'x.real'"),
        ({"name": "custom", "expression": "x * sigmoid(beta * x)"}, "unknown name 'beta'"),
        ({"name": "custom", "expression": "x * sigmoid(beta * x)", "learnable": {"gamma": 1.0}}, "'beta'"),
    ],
)
def test_spec_validation_reports_the_expression_location(activation: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate(spec_with(activation))
    errors = caught.value.errors()
    assert [error["loc"] for error in errors] == [("activations", 2, "expression")]
    assert "invalid expression" in errors[0]["msg"]
    assert fragment in errors[0]["msg"]


def test_spec_accepts_a_learnable_formula() -> None:
    activation = {"name": "custom", "expression": "x * sigmoid(beta * x)", "learnable": {"beta": 1.0}, "label": "sb"}
    spec = ExperimentSpec.model_validate(spec_with(activation))
    assert spec.activations[2].learnable == {"beta": 1.0}
