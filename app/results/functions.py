"""Activation shapes in numpy, for drawing learned functions against their starting shapes (no torch).

Covers every catalog activation that can learn (``ActivationInfo.can_learn``), one entry of
``_SHAPES`` each, from the parameter values the engine stores per layer (``activation_parameters``):
prelu (``slope``, or ``slope_mean`` in per-unit mode), swish_beta (``beta``), pau (``a0``..``a5``,
``b1``..``b4`` with the safe denominator 1 + sum |b_i| |x|^i), the input-conditioned dyrelu and
meta_acon at a fixed context (at the start: a zero hyper-network output; learned: the probe-set means
of the generated coefficients ``a<k>_mean``/``b<k>_mean`` or ``beta_mean``, with ``p1_mean``/``p2_mean``)
and custom formulas with learnable
scalars, evaluated from the ``app.expressions`` tree with ``_FUNCTIONS``, the numpy twin of the
catalog's expression functions. A guard test checks both tables against the catalog and the
shapes against the torch modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

from app.expressions import BinaryOperation, Call, Node, Number, UnaryOperation, Variable, parse_expression
from app.spec import ActivationSpec

_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
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
    "min": np.minimum,
    "max": np.maximum,
}


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
        return _FUNCTIONS[node.function](*(_evaluate(argument, x, scalars) for argument in node.arguments))
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


def _swish(x: np.ndarray, beta: float) -> np.ndarray:
    return np.asarray(x * special.expit(beta * x), dtype=float)


def _custom_tree(activation: ActivationSpec) -> Node | None:
    """The parsed formula of a custom activation with learnable scalars, None without any."""
    if not (activation.learnable and activation.expression):
        return None
    return parse_expression(activation.expression, activation.learnable.keys())


def _prelu_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    return leaky_relu(x, float(activation.resolved_params()["init"]))


def _prelu_learned(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    slope = parameters.get("slope", parameters.get("slope_mean"))
    return None if slope is None else leaky_relu(x, float(slope))


def _swish_beta_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    return _swish(x, float(activation.resolved_params()["init"]))


def _swish_beta_learned(
    activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray
) -> np.ndarray | None:
    beta = parameters.get("beta")
    return None if beta is None else _swish(x, float(beta))


def _pau_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    # The unit is initialised to approximate this leaky ReLU; the target is the honest reference shape.
    return leaky_relu(x, float(activation.resolved_params()["negative_slope"]))


def _pau_learned(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    numerator = [parameters.get(f"a{index}") for index in range(6)]
    denominator = [parameters.get(f"b{index}") for index in range(1, 5)]
    if any(value is None for value in (*numerator, *denominator)):
        return None
    return pade(
        x,
        [float(value) for value in numerator if value is not None],
        [float(value) for value in denominator if value is not None],
    )


def _custom_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    tree = _custom_tree(activation)
    return None if tree is None else evaluate_expression(tree, x, activation.learnable or {})


def _custom_learned(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    tree = _custom_tree(activation)
    scalars = activation.learnable or {}
    if tree is None or any(scalar not in parameters for scalar in scalars):
        return None
    return evaluate_expression(tree, x, {scalar: float(parameters[scalar]) for scalar in scalars})


def dynamic_relu(x: np.ndarray, slopes: list[float], intercepts: list[float]) -> np.ndarray:
    """max_k (a_k x + b_k): dynamic ReLU at fixed coefficients."""
    pieces = [slope * x + intercept for slope, intercept in zip(slopes, intercepts, strict=True)]
    return np.asarray(np.max(np.stack(pieces), axis=0), dtype=float)


def acon_c(x: np.ndarray, p1: float, p2: float, beta: float) -> np.ndarray:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x: ACON-C at a fixed beta."""
    difference = (p1 - p2) * x
    return np.asarray(difference * special.expit(beta * difference) + p2 * x, dtype=float)


def _dyrelu_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    # A zero hyper-network output leaves the paper's initial coefficients a = (1, 0, ...), b = 0: ReLU.
    pieces = int(activation.resolved_params()["pieces"])
    return dynamic_relu(x, [1.0] + [0.0] * (pieces - 1), [0.0] * pieces)


def _dyrelu_learned(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    # The generated coefficients vary with the input: draw the function at their probe-set means.
    pieces = int(activation.resolved_params()["pieces"])
    slopes = [parameters.get(f"a{k + 1}_mean") for k in range(pieces)]
    intercepts = [parameters.get(f"b{k + 1}_mean") for k in range(pieces)]
    if any(value is None for value in (*slopes, *intercepts)):
        return None
    return dynamic_relu(x, [float(v) for v in slopes if v is not None], [float(v) for v in intercepts if v is not None])


def _meta_acon_start(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    # p1 = 1, p2 = 0 and beta = sigmoid(0) = 0.5 at a zero hyper-network output.
    return acon_c(x, 1.0, 0.0, 0.5)


def _meta_acon_learned(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    # At the channel means of p1 and p2 and the probe-set mean of the generated beta.
    values = [parameters.get(name) for name in ("p1_mean", "p2_mean", "beta_mean")]
    if any(value is None for value in values):
        return None
    p1, p2, beta = (float(value) for value in values if value is not None)
    return acon_c(x, p1, p2, beta)


@dataclass(frozen=True)
class LearnableShape:
    """How to draw one learnable activation: the function it starts as and the one it learned."""

    start: Callable[[ActivationSpec, np.ndarray], np.ndarray | None]
    learned: Callable[[ActivationSpec, Mapping[str, float], np.ndarray], np.ndarray | None]


_SHAPES: dict[str, LearnableShape] = {
    "prelu": LearnableShape(_prelu_start, _prelu_learned),
    "swish_beta": LearnableShape(_swish_beta_start, _swish_beta_learned),
    "pau": LearnableShape(_pau_start, _pau_learned),
    "dyrelu": LearnableShape(_dyrelu_start, _dyrelu_learned),
    "meta_acon": LearnableShape(_meta_acon_start, _meta_acon_learned),
    "custom": LearnableShape(_custom_start, _custom_learned),
}


def starting_shape(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    """The function a learnable activation starts as, or None for a fixed activation."""
    shape = _SHAPES.get(activation.canonical_name)
    return None if shape is None else shape.start(activation, x)


def learned_shape(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    """The function with learned parameter values (as stored by the engine), or None when they are missing."""
    shape = _SHAPES.get(activation.canonical_name)
    return None if shape is None else shape.learned(activation, parameters, x)
