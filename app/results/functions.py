"""Activation shapes in numpy, for drawing learned functions against their starting shapes (no torch).

Covers the learnable activations from the parameter values the engine stores per layer
(``activation_parameters``): prelu (``slope``, or ``slope_mean`` in per-unit mode), swish_beta
(``beta``), pau (``a0``..``a5``, ``b1``..``b4`` with the safe denominator 1 + sum |b_i| |x|^i) and
custom formulas with learnable scalars, evaluated from the ``app.expressions`` tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import special

from app.expressions import BinaryOperation, Call, Node, Number, UnaryOperation, Variable, parse_expression
from app.spec import ActivationSpec

LEARNABLE_CURVE_NAMES: frozenset[str] = frozenset({"prelu", "swish_beta", "pau", "custom"})

_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "sigmoid": special.expit,
    "relu": lambda values: np.maximum(values, 0.0),
    "abs": np.abs,
    "erf": special.erf,
    "softplus": lambda values: np.logaddexp(0.0, values),
    "sin": np.sin,
    "cos": np.cos,
}
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"min": np.minimum, "max": np.maximum}


def evaluate_expression(node: Node, x: np.ndarray, scalars: Mapping[str, float]) -> np.ndarray:
    """Evaluate a parsed formula over the points x with the given scalar values."""
    with np.errstate(all="ignore"):
        result = _evaluate(node, x, scalars)
    return np.broadcast_to(np.asarray(result, dtype=float), x.shape).copy()


def _evaluate(node: Node, x: np.ndarray, scalars: Mapping[str, float]) -> np.ndarray:
    if isinstance(node, Number):
        return np.asarray(node.value, dtype=float)
    if isinstance(node, Variable):
        return x if node.name == "x" else np.asarray(float(scalars[node.name]), dtype=float)
    if isinstance(node, UnaryOperation):
        operand = _evaluate(node.operand, x, scalars)
        return -operand if node.operator == "-" else operand
    if isinstance(node, BinaryOperation):
        left = _evaluate(node.left, x, scalars)
        right = _evaluate(node.right, x, scalars)
        operations: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
            "+": np.add,
            "-": np.subtract,
            "*": np.multiply,
            "/": np.divide,
            "**": np.power,
        }
        return operations[node.operator](left, right)
    if isinstance(node, Call):
        arguments = [_evaluate(argument, x, scalars) for argument in node.arguments]
        if node.function in _UNARY:
            return _UNARY[node.function](arguments[0])
        return _BINARY[node.function](arguments[0], arguments[1])
    raise AssertionError(f"unknown expression node {node!r}")


def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    """x for x > 0, slope * x otherwise."""
    return np.where(x > 0, x, slope * x)


def pade(x: np.ndarray, numerator: list[float], denominator: list[float]) -> np.ndarray:
    """P5/Q4 Pade unit with the safe denominator 1 + sum_i |b_i| |x|^i."""
    top = sum(coefficient * x**power for power, coefficient in enumerate(numerator))
    magnitude = np.abs(x)
    bottom = 1.0 + sum(abs(coefficient) * magnitude ** (power + 1) for power, coefficient in enumerate(denominator))
    return np.asarray(top / bottom, dtype=float)


def starting_shape(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    """The function a learnable activation starts as, or None for a fixed activation."""
    name = activation.canonical_name
    params = activation.resolved_params()
    if name == "prelu":
        return leaky_relu(x, float(params["init"]))
    if name == "swish_beta":
        return np.asarray(x * special.expit(float(params["init"]) * x), dtype=float)
    if name == "pau":
        # The unit is initialised to approximate this leaky ReLU; the target is the honest reference shape.
        return leaky_relu(x, float(params["negative_slope"]))
    if name == "custom" and activation.learnable and activation.expression:
        tree = parse_expression(activation.expression, activation.learnable.keys())
        return evaluate_expression(tree, x, activation.learnable)
    return None


def learned_shape(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    """The function with learned parameter values (as stored by the engine), or None when they are missing."""
    name = activation.canonical_name
    if name == "prelu":
        slope = parameters.get("slope", parameters.get("slope_mean"))
        return None if slope is None else leaky_relu(x, float(slope))
    if name == "swish_beta":
        beta = parameters.get("beta")
        return None if beta is None else np.asarray(x * special.expit(float(beta) * x), dtype=float)
    if name == "pau":
        numerator = [parameters.get(f"a{index}") for index in range(6)]
        denominator = [parameters.get(f"b{index}") for index in range(1, 5)]
        if any(value is None for value in (*numerator, *denominator)):
            return None
        return pade(
            x,
            [float(value) for value in numerator if value is not None],
            [float(value) for value in denominator if value is not None],
        )
    if name == "custom" and activation.learnable and activation.expression:
        if any(scalar not in parameters for scalar in activation.learnable):
            return None
        tree = parse_expression(activation.expression, activation.learnable.keys())
        return evaluate_expression(tree, x, {scalar: float(parameters[scalar]) for scalar in activation.learnable})
    return None
