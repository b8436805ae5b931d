"""Every catalog activation as numpy closed forms: f(x) and f'(x), for the gallery and the learned-shape plots.

Pure numpy and scipy, no torch (the API draws these). ``SHAPES`` has one ``ShapeForm`` per catalog name;
``tests/training/test_activation_shapes.py`` fails when a catalog activation has none and checks each
value and derivative against the torch module of ``worker/training/activations.py`` (autograd) to 1e-6
on a grid that includes the kinks. Derivatives at kinks follow PyTorch's kernels (see that module's
docstring): ReLU'(0) = 0, the negative slope at 0 for leaky ReLU and PReLU, alpha at 0 for ELU, 0 at
the clip points of hardtanh and relu6, hardswish's outer pieces at -3 and 3.

A form reads the activation's resolved catalog parameters and its *coefficients*: the values a
learnable unit learns (prelu ``slope``, swish_beta ``beta``, pau ``a0``..``a5``/``b1``..``b4``, the
input-conditioned dyrelu's ``a<k>``/``b<k>`` and meta_acon's ``p1``, ``p2``, ``beta``, a custom
formula's scalars). ``initial_coefficients`` gives them at initialisation, ``stored_coefficients``
reads them from what the engine stores per layer (``activation_parameters``). Input-conditioned units
are drawn at a fixed context: at the start a zero hyper-network output (dyrelu is then ReLU, meta_acon
x * sigmoid(0.5 x)); as learned, the probe-set means of the generated coefficients.

Custom formulas are evaluated over the ``app.expressions`` tree; their derivative is exact, by
forward-mode differentiation of the same tree (each node gives its value and its derivative in x),
with autograd's conventions at the kinks of relu, abs, min and max (no gradient at ties).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from app.catalog import ParameterValue
from app.expressions import BinaryOperation, Call, Node, Number, UnaryOperation, Variable, parse_expression
from app.spec import ActivationSpec

Params = Mapping[str, ParameterValue]
Coefficients = Mapping[str, float]
Form = Callable[[np.ndarray, Params, Coefficients], np.ndarray]

# SELU's constants (Klambauer et al. 2017), as PyTorch uses them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715

# Even rational approximation of |x| on [-3, 3]:
#   |x| ~ (P0 + P2 x^2 + P4 x^4) / (1 + Q2 x^2 + Q4 x^4),  max error 0.02616 on [-3, 3].
# Derived once (near-minimax: least squares, then Nelder-Mead on the L^p norm of the error on a
# 6,001-point grid with p raised to 512). Because leaky_relu(x) = (1+s)/2 x + (1-s)/2 |x|, the
# P5/Q4 coefficients of a PAU that starts as leaky ReLU with slope s follow in closed form (see
# ``pau_initial_coefficients``), with max error (1-s)/2 * 0.02616 <= 0.0131 on [-3, 3].
_ABS_P0 = 0.02615636109
_ABS_P2 = 5.520269530
_ABS_P4 = 5.067421870
_ABS_Q2 = 8.925367380
_ABS_Q4 = 0.9059494400
PAU_FIT_RANGE = 3.0
PAU_ABS_MAX_ERROR = 0.02616


def pau_initial_coefficients(negative_slope: float) -> tuple[list[float], list[float]]:
    """Numerator a0..a5 and denominator b1..b4 of a PAU approximating leaky ReLU on [-3, 3]."""
    odd = (1.0 + negative_slope) / 2.0
    even = (1.0 - negative_slope) / 2.0
    numerator = [even * _ABS_P0, odd, even * _ABS_P2, odd * _ABS_Q2, even * _ABS_P4, odd * _ABS_Q4]
    denominator = [0.0, _ABS_Q2, 0.0, _ABS_Q4]
    return numerator, denominator


# --- building blocks, also used by app.results.functions -------------------------------------------------


def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    """x for x > 0, slope * x otherwise."""
    return np.where(x > 0, x, slope * x)


def pade(x: np.ndarray, numerator: list[float], denominator: list[float]) -> np.ndarray:
    """P5/Q4 Pade unit with the safe denominator 1 + sum_i |b_i| |x|^i."""
    top = sum(coefficient * x**power for power, coefficient in enumerate(numerator))
    magnitude = np.abs(x)
    bottom = 1.0 + sum(abs(coefficient) * magnitude ** (power + 1) for power, coefficient in enumerate(denominator))
    return np.asarray(top / bottom, dtype=float)


def _pade_derivative(x: np.ndarray, numerator: list[float], denominator: list[float]) -> np.ndarray:
    top = sum(coefficient * x**power for power, coefficient in enumerate(numerator))
    top_slope = sum(power * coefficient * x ** (power - 1) for power, coefficient in enumerate(numerator) if power)
    magnitude = np.abs(x)
    bottom = 1.0 + sum(abs(coefficient) * magnitude ** (power + 1) for power, coefficient in enumerate(denominator))
    # d|x|/dx is sign(x), 0 at 0 as autograd's abs.
    bottom_slope = np.sign(x) * sum(
        (power + 1) * abs(coefficient) * magnitude**power for power, coefficient in enumerate(denominator)
    )
    return np.asarray((top_slope * bottom - top * bottom_slope) / bottom**2, dtype=float)


def _dynamic_relu_pieces(x: np.ndarray, slopes: list[float], intercepts: list[float]) -> tuple[np.ndarray, np.ndarray]:
    # As the torch unit: the running maximum over pieces passes no gradient where two pieces tie.
    best = slopes[0] * x + intercepts[0]
    slope = np.full_like(x, slopes[0], dtype=float)
    for piece_slope, intercept in zip(slopes[1:], intercepts[1:], strict=True):
        piece = piece_slope * x + intercept
        slope = np.where(best == piece, 0.0, np.where(piece > best, piece_slope, slope))
        best = np.maximum(best, piece)
    return np.asarray(best, dtype=float), slope


def dynamic_relu(x: np.ndarray, slopes: list[float], intercepts: list[float]) -> np.ndarray:
    """max_k (a_k x + b_k): dynamic ReLU at fixed coefficients."""
    return _dynamic_relu_pieces(x, slopes, intercepts)[0]


def acon_c(x: np.ndarray, p1: float, p2: float, beta: float) -> np.ndarray:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x: ACON-C at a fixed beta."""
    difference = (p1 - p2) * x
    return np.asarray(difference * special.expit(beta * difference) + p2 * x, dtype=float)


def _acon_c_derivative(x: np.ndarray, p1: float, p2: float, beta: float) -> np.ndarray:
    spread = p1 - p2
    gate = special.expit(beta * spread * x)
    return np.asarray(spread * gate + spread * x * gate * (1.0 - gate) * beta * spread + p2, dtype=float)


# --- the custom formula language over numpy, with forward-mode derivatives --------------------------------

Dual = tuple[np.ndarray, np.ndarray]


def _unary_rules() -> dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """Each one-argument function of the language: its value and its derivative at a point."""

    def softplus(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # PyTorch's softplus (beta 1, threshold 20) is the identity above the threshold.
        return np.where(a > 20.0, a, np.logaddexp(0.0, a)), np.where(a > 20.0, 1.0, special.expit(a))

    def tanh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value = np.tanh(a)
        return value, 1.0 - value**2

    def sigmoid(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value = special.expit(a)
        return value, value * (1.0 - value)

    def sqrt(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value = np.sqrt(a)
        return value, 0.5 / value

    return {
        "exp": lambda a: (np.exp(a), np.exp(a)),
        "log": lambda a: (np.log(a), 1.0 / a),
        "sqrt": sqrt,
        "tanh": tanh,
        "sigmoid": sigmoid,
        "relu": lambda a: (np.maximum(a, 0.0), np.where(a > 0, 1.0, 0.0)),
        "abs": lambda a: (np.abs(a), np.sign(a)),
        "erf": lambda a: (special.erf(a), 2.0 / math.sqrt(math.pi) * np.exp(-(a**2))),
        "softplus": softplus,
        "sin": lambda a: (np.sin(a), np.cos(a)),
        "cos": lambda a: (np.cos(a), -np.sin(a)),
    }


_UNARY = _unary_rules()
# Two-argument functions: a tie passes no gradient to either side, as the torch evaluator's min and max.
_BINARY_FUNCTIONS = ("min", "max")
EXPRESSION_FUNCTION_NAMES: frozenset[str] = frozenset((*_UNARY, *_BINARY_FUNCTIONS))


def _dual(node: Node, x: np.ndarray, scalars: Coefficients) -> Dual:
    zero = np.zeros_like(x)
    if isinstance(node, Number):
        return np.full_like(x, node.value), zero
    if isinstance(node, Variable):
        return (x, np.ones_like(x)) if node.name == "x" else (np.full_like(x, float(scalars[node.name])), zero)
    if isinstance(node, UnaryOperation):
        value, slope = _dual(node.operand, x, scalars)
        return (-value, -slope) if node.operator == "-" else (value, slope)
    if isinstance(node, BinaryOperation):
        (a, da), (b, db) = _dual(node.left, x, scalars), _dual(node.right, x, scalars)
        if node.operator == "+":
            return a + b, da + db
        if node.operator == "-":
            return a - b, da - db
        if node.operator == "*":
            return a * b, da * b + a * db
        if node.operator == "/":
            return a / b, (da * b - a * db) / b**2
        if node.operator == "**":
            value = a**b
            slope = np.where(b == 0, 0.0, b * a ** (b - 1)) * da
            # The exponent's term only where it varies, and none at base 0 (autograd's convention).
            if np.any(db != 0):
                slope = slope + np.where((a == 0) & (b >= 0), 0.0, value * np.log(a)) * db
            return value, slope
        raise AssertionError(f"operator {node.operator!r} passed the parser")
    if isinstance(node, Call):
        arguments = [_dual(argument, x, scalars) for argument in node.arguments]
        if node.function in _UNARY:
            ((a, da),) = arguments
            value, outer = _UNARY[node.function](a)
            return value, outer * da
        (a, da), (b, db) = arguments
        first = a > b if node.function == "max" else a < b
        return np.where(first, a, b), np.where(a == b, 0.0, np.where(first, da, db))
    raise AssertionError(f"unknown expression node {node!r}")


def evaluate_expression_with_slope(node: Node, x: np.ndarray, scalars: Coefficients) -> Dual:
    """A parsed formula's value and its exact derivative in x over the points x."""
    with np.errstate(all="ignore"):
        value, slope = _dual(node, np.asarray(x, dtype=float), scalars)
    return np.broadcast_to(value, np.shape(x)).copy(), np.broadcast_to(slope, np.shape(x)).copy()


def evaluate_expression(node: Node, x: np.ndarray, scalars: Coefficients) -> np.ndarray:
    """Evaluate a parsed formula over the points x with the given scalar values."""
    return evaluate_expression_with_slope(node, x, scalars)[0]


# --- one form per catalog activation ---------------------------------------------------------------------


def _f(params: Params, name: str) -> float:
    return float(params[name])  # type: ignore[arg-type]


def _sigmoid(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return np.asarray(special.expit(x), dtype=float)


def _sigmoid_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    s = special.expit(x)
    return np.asarray(s * (1.0 - s), dtype=float)


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _elu_slope(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def _gelu(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    if p["approximate"] == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_GELU_TANH_K * (x + _GELU_TANH_C * x**3)))
    return np.asarray(x * special.ndtr(x), dtype=float)


def _gelu_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    if p["approximate"] == "tanh":
        t = np.tanh(_GELU_TANH_K * (x + _GELU_TANH_C * x**3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * _GELU_TANH_K * (1.0 + 3.0 * _GELU_TANH_C * x**2)
    return np.asarray(special.ndtr(x) + x * np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi), dtype=float)


def _silu_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    s = special.expit(x)
    return np.asarray(s * (1.0 + x * (1.0 - s)), dtype=float)


def _mish(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return x * np.tanh(np.logaddexp(0.0, x))


def _mish_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    t = np.tanh(np.logaddexp(0.0, x))
    return np.asarray(t + x * (1.0 - t**2) * special.expit(x), dtype=float)


def _softplus(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    beta, threshold = _f(p, "beta"), _f(p, "threshold")
    return np.where(beta * x > threshold, x, np.logaddexp(0.0, beta * x) / beta)


def _softplus_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    beta, threshold = _f(p, "beta"), _f(p, "threshold")
    return np.where(beta * x > threshold, 1.0, special.expit(beta * x))


def _hardswish(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _hardswish_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return np.where(x <= -3.0, 0.0, np.where(x >= 3.0, 1.0, (2.0 * x + 3.0) / 6.0))


def _clip(x: np.ndarray, lower: float, upper: float) -> np.ndarray:
    return np.minimum(np.maximum(x, lower), upper)


def _clip_slope(x: np.ndarray, lower: float, upper: float) -> np.ndarray:
    return np.where((x > lower) & (x < upper), 1.0, 0.0)


def _celu(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    alpha = _f(p, "alpha")
    return np.maximum(x, 0.0) + np.minimum(0.0, alpha * np.expm1(np.minimum(x, 0.0) / alpha))


def _celu_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    alpha = _f(p, "alpha")
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0) / alpha))


def _swish(x: np.ndarray, beta: float) -> np.ndarray:
    return np.asarray(x * special.expit(beta * x), dtype=float)


def _swish_slope(x: np.ndarray, beta: float) -> np.ndarray:
    s = special.expit(beta * x)
    return np.asarray(s + beta * x * s * (1.0 - s), dtype=float)


def _pau_coefficients(c: Coefficients) -> tuple[list[float], list[float]]:
    return [float(c[f"a{i}"]) for i in range(6)], [float(c[f"b{i}"]) for i in range(1, 5)]


def _dyrelu_coefficients(p: Params, c: Coefficients) -> tuple[list[float], list[float]]:
    pieces = int(p["pieces"])
    return [float(c[f"a{k + 1}"]) for k in range(pieces)], [float(c[f"b{k + 1}"]) for k in range(pieces)]


def _custom(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return evaluate_expression(_formula(p, c), x, c)


def _custom_slope(x: np.ndarray, p: Params, c: Coefficients) -> np.ndarray:
    return evaluate_expression_with_slope(_formula(p, c), x, c)[1]


def _formula(p: Params, c: Coefficients) -> Node:
    return parse_expression(str(p["expression"]), c.keys())


def _no_coefficients(activation: ActivationSpec) -> dict[str, float]:
    return {}


def _initial_pau(activation: ActivationSpec) -> dict[str, float]:
    numerator, denominator = pau_initial_coefficients(float(activation.resolved_params()["negative_slope"]))
    values = {f"a{i}": value for i, value in enumerate(numerator)}
    values.update({f"b{i + 1}": value for i, value in enumerate(denominator)})
    return values


def _initial_dyrelu(activation: ActivationSpec) -> dict[str, float]:
    # A zero hyper-network output leaves the paper's initial coefficients a = (1, 0, ...), b = 0: ReLU.
    pieces = int(activation.resolved_params()["pieces"])
    values = {f"a{k + 1}": 1.0 if k == 0 else 0.0 for k in range(pieces)}
    values.update({f"b{k + 1}": 0.0 for k in range(pieces)})
    return values


def _stored_same(names: Callable[[ActivationSpec], list[str]]) -> Callable[..., dict[str, float] | None]:
    """Coefficients stored under their own names (swish_beta's beta, pau's a0..b4, custom scalars)."""

    def read(activation: ActivationSpec, stored: Mapping[str, float]) -> dict[str, float] | None:
        wanted = names(activation)
        if not wanted or any(name not in stored for name in wanted):
            return None
        return {name: float(stored[name]) for name in wanted}

    return read


def _stored_prelu(activation: ActivationSpec, stored: Mapping[str, float]) -> dict[str, float] | None:
    slope = stored.get("slope", stored.get("slope_mean"))
    return None if slope is None else {"slope": float(slope)}


def _stored_means(names: Callable[[ActivationSpec], list[str]]) -> Callable[..., dict[str, float] | None]:
    """Coefficients of an input-conditioned unit: their probe-set (or channel) means ``<name>_mean``."""

    def read(activation: ActivationSpec, stored: Mapping[str, float]) -> dict[str, float] | None:
        wanted = names(activation)
        if any(f"{name}_mean" not in stored for name in wanted):
            return None
        return {name: float(stored[f"{name}_mean"]) for name in wanted}

    return read


def _dyrelu_names(activation: ActivationSpec) -> list[str]:
    pieces = int(activation.resolved_params()["pieces"])
    return [f"a{k + 1}" for k in range(pieces)] + [f"b{k + 1}" for k in range(pieces)]


def _nothing_stored(activation: ActivationSpec, stored: Mapping[str, float]) -> None:
    return None


@dataclass(frozen=True)
class ShapeForm:
    """f and f' of one catalog activation, with the coefficients it starts from and how stored values map to them."""

    value: Form
    derivative: Form
    derivative_text: str
    initial: Callable[[ActivationSpec], dict[str, float]] = _no_coefficients
    stored: Callable[[ActivationSpec, Mapping[str, float]], dict[str, float] | None] = _nothing_stored
    # Where the drawn function is one of a family chosen per input (input-conditioned units).
    context_note: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _fixed(value: Callable[[np.ndarray], np.ndarray], slope: Callable[[np.ndarray], np.ndarray]) -> tuple[Form, Form]:
    return (lambda x, p, c: value(x)), (lambda x, p, c: slope(x))


def _relu_forms() -> tuple[Form, Form]:
    return _fixed(lambda x: np.maximum(x, 0.0), lambda x: np.where(x > 0, 1.0, 0.0))


SHAPES: dict[str, ShapeForm] = {
    "sigmoid": ShapeForm(_sigmoid, _sigmoid_slope, "sigmoid(x) * (1 - sigmoid(x))"),
    "tanh": ShapeForm(*_fixed(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2), "1 - tanh(x)^2"),
    "relu": ShapeForm(*_relu_forms(), "1 if x > 0 else 0 (0 at 0)"),
    "leaky_relu": ShapeForm(
        lambda x, p, c: leaky_relu(x, _f(p, "negative_slope")),
        lambda x, p, c: np.where(x > 0, 1.0, _f(p, "negative_slope")),
        "1 if x > 0 else negative_slope",
    ),
    "elu": ShapeForm(
        lambda x, p, c: _elu(x, _f(p, "alpha")),
        lambda x, p, c: _elu_slope(x, _f(p, "alpha")),
        "1 if x > 0 else alpha * exp(x)",
    ),
    "selu": ShapeForm(
        lambda x, p, c: SELU_SCALE * _elu(x, SELU_ALPHA),
        lambda x, p, c: SELU_SCALE * _elu_slope(x, SELU_ALPHA),
        "scale if x > 0 else scale * alpha * exp(x)",
    ),
    "gelu": ShapeForm(_gelu, _gelu_slope, "Phi(x) + x * phi(x) (exact); the tanh form's own derivative"),
    "silu": ShapeForm(
        lambda x, p, c: np.asarray(x * special.expit(x), dtype=float),
        _silu_slope,
        "sigmoid(x) * (1 + x * (1 - sigmoid(x)))",
    ),
    "mish": ShapeForm(_mish, _mish_slope, "tanh(sp) + x * (1 - tanh(sp)^2) * sigmoid(x), sp = softplus(x)"),
    "softplus": ShapeForm(_softplus, _softplus_slope, "sigmoid(beta * x); 1 above the threshold"),
    "hardswish": ShapeForm(_hardswish, _hardswish_slope, "0 for x <= -3, (2x + 3) / 6 between, 1 for x >= 3"),
    "softsign": ShapeForm(
        *_fixed(lambda x: x / (1.0 + np.abs(x)), lambda x: 1.0 / (1.0 + np.abs(x)) ** 2), "1 / (1 + |x|)^2"
    ),
    "hardtanh": ShapeForm(
        lambda x, p, c: _clip(x, _f(p, "min_val"), _f(p, "max_val")),
        lambda x, p, c: _clip_slope(x, _f(p, "min_val"), _f(p, "max_val")),
        "1 strictly between min_val and max_val, else 0",
    ),
    "relu6": ShapeForm(
        *_fixed(lambda x: _clip(x, 0.0, 6.0), lambda x: _clip_slope(x, 0.0, 6.0)), "1 for 0 < x < 6, else 0"
    ),
    "celu": ShapeForm(_celu, _celu_slope, "1 if x > 0 else exp(x / alpha)"),
    "prelu": ShapeForm(
        lambda x, p, c: leaky_relu(x, float(c["slope"])),
        lambda x, p, c: np.where(x > 0, 1.0, float(c["slope"])),
        "1 if x > 0 else a",
        initial=lambda activation: {"slope": float(activation.resolved_params()["init"])},
        stored=_stored_prelu,
        notes=("In mode unit the learned curve uses the mean slope over units.",),
    ),
    "swish_beta": ShapeForm(
        lambda x, p, c: _swish(x, float(c["beta"])),
        lambda x, p, c: _swish_slope(x, float(c["beta"])),
        "sigmoid(beta x) + beta x sigmoid(beta x) (1 - sigmoid(beta x))",
        initial=lambda activation: {"beta": float(activation.resolved_params()["init"])},
        stored=_stored_same(lambda activation: ["beta"]),
    ),
    "pau": ShapeForm(
        lambda x, p, c: pade(x, *_pau_coefficients(c)),
        lambda x, p, c: _pade_derivative(x, *_pau_coefficients(c)),
        "quotient rule on P(x) / Q(|x|), d|x|/dx = sign(x)",
        initial=_initial_pau,
        stored=_stored_same(lambda activation: [*(f"a{i}" for i in range(6)), *(f"b{i}" for i in range(1, 5))]),
        notes=(f"Starts as a rational fit of leaky ReLU on [-{PAU_FIT_RANGE:g}, {PAU_FIT_RANGE:g}].",),
    ),
    "dyrelu": ShapeForm(
        lambda x, p, c: dynamic_relu(x, *_dyrelu_coefficients(p, c)),
        lambda x, p, c: _dynamic_relu_pieces(x, *_dyrelu_coefficients(p, c))[1],
        "the slope a_k of the winning piece (0 where pieces tie)",
        initial=_initial_dyrelu,
        stored=_stored_means(_dyrelu_names),
        context_note="Input-conditioned: drawn at a fixed context. At the start, a zero hyper-network output "
        "(a = (1, 0, ...), b = 0: ReLU); as learned, the probe-set means of the generated a_k and b_k.",
    ),
    "meta_acon": ShapeForm(
        lambda x, p, c: acon_c(x, float(c["p1"]), float(c["p2"]), float(c["beta"])),
        lambda x, p, c: _acon_c_derivative(x, float(c["p1"]), float(c["p2"]), float(c["beta"])),
        "d s + d x s (1 - s) beta d + p2, d = p1 - p2, s = sigmoid(beta d x)",
        initial=lambda activation: {"p1": 1.0, "p2": 0.0, "beta": 0.5},
        stored=_stored_means(lambda activation: ["p1", "p2", "beta"]),
        context_note="Input-conditioned: drawn at a fixed context. At the start, a zero hyper-network output "
        "(p1 = 1, p2 = 0, beta = sigmoid(0) = 0.5); as learned, the channel means of p1 and p2 and the "
        "probe-set mean of the generated beta.",
    ),
    "custom": ShapeForm(
        _custom,
        _custom_slope,
        "exact, by forward-mode differentiation of the formula",
        initial=lambda activation: dict(activation.learnable or {}),
        stored=_stored_same(lambda activation: list(activation.learnable or {})),
    ),
}


def form(activation: ActivationSpec) -> ShapeForm:
    """The closed forms of this activation's catalog entry."""
    return SHAPES[activation.canonical_name]


def shape_params(activation: ActivationSpec) -> dict[str, ParameterValue]:
    """The resolved catalog parameters a form reads (a custom formula's text under ``expression``)."""
    params: dict[str, ParameterValue] = dict(activation.resolved_params())
    if activation.canonical_name == "custom":
        params["expression"] = str(activation.expression)
    return params


def initial_coefficients(activation: ActivationSpec) -> dict[str, float]:
    """The learned values at initialisation (empty for a fixed activation)."""
    return form(activation).initial(activation)


def stored_coefficients(activation: ActivationSpec, stored: Mapping[str, float]) -> dict[str, float] | None:
    """The coefficients from what the engine stores per layer, or None when they are missing or nothing is learned."""
    return form(activation).stored(activation, stored)


def curves(
    activation: ActivationSpec, x: np.ndarray, coefficients: Coefficients | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """f(x) and f'(x) at these coefficients (default: at initialisation)."""
    shape = form(activation)
    values = initial_coefficients(activation) if coefficients is None else coefficients
    params = shape_params(activation)
    points = np.asarray(x, dtype=float)
    with np.errstate(all="ignore"):
        return (
            np.asarray(shape.value(points, params, values), dtype=float),
            np.asarray(shape.derivative(points, params, values), dtype=float),
        )
