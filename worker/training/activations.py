"""Activation modules built from an ``ActivationSpec``: every catalog activation plus custom formulas.

Pure PyTorch. ``build_activation`` is the one entry point; each catalog name maps to one
builder function in ``_BUILDERS``, and each function of the catalog's expression language to one
torch function in ``_EXPRESSION_FUNCTIONS`` (guard tests check both). Every module is elementwise
except the input-conditioned ones (dyrelu, meta_acon), whose coefficients depend on the example's
whole input to the layer; per-unit parameters (PReLU mode "unit") and channel-wise coefficients
broadcast over dimension 1, the unit/channel dimension of (batch, width) and
(batch, channels, *spatial) tensors. In an Elman recurrence the input-conditioned units see the
step's pre-activation vector, as in an MLP (coefficients per step).

Derivatives at kinks are those of PyTorch's kernels, and the tests pin them:

- relu, relu6, hardtanh: 0 at every kink (ReLU'(0) = 0, the clip points of hardtanh and relu6 included);
- leaky_relu and prelu: the negative slope at 0; elu: alpha at 0; selu: scale * alpha at 0;
- hardswish: the outer pieces at its kinks, 0 at -3 and 1 at 3;
- custom ``relu`` and ``abs``: 0 at 0; custom ``max(a, b)`` and ``min(a, b)`` pass no gradient to either
  argument where a == b, so ``max(x, 0)`` and ``max(0, x)`` both have derivative 0 at 0 like ReLU
  (PyTorch's ``maximum`` would split the gradient in half at ties).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The PAU's starting coefficients are closed forms the API also draws; their one home is app.activation_shapes.
from app.activation_shapes import PAU_ABS_MAX_ERROR, PAU_FIT_RANGE, pau_initial_coefficients
from app.catalog import ACTIVATIONS, EXPRESSION_FUNCTIONS, ParameterValue
from app.expressions import BinaryOperation, Call, Node, Number, UnaryOperation, Variable, parse_expression
from app.spec import ActivationSpec

ParameterValues = dict[str, float | list[float]]
__all__ = ["PAU_ABS_MAX_ERROR", "PAU_FIT_RANGE", "build_activation", "pau_initial_coefficients"]


class ActivationModule(nn.Module):
    """Base of every activation module: catalog metadata plus current learnable values."""

    def __init__(self, spec: ActivationSpec) -> None:
        super().__init__()
        info = ACTIVATIONS[spec.canonical_name]
        self.name: str = info.name
        self.label: str = spec.display_label
        self.can_die: bool = info.can_die
        self.saturation: Literal["sigmoid", "tanh"] | None = info.saturation

    def parameter_values(self) -> ParameterValues | None:
        """Current values of the learnable parameters (JSON-serialisable), or None when nothing is learned."""
        return None

    def extra_repr(self) -> str:
        return f"label={self.label!r}"


class ElementwiseActivation(ActivationModule):
    """A fixed activation: one elementwise function with its parameters bound."""

    def __init__(self, spec: ActivationSpec, function: Callable[[Tensor], Tensor]) -> None:
        super().__init__(spec)
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


class PReLUActivation(ActivationModule):
    """Parametric ReLU with one learned slope per layer or per unit (dimension 1)."""

    def __init__(self, spec: ActivationSpec, *, width: int, per_unit: bool, initial_slope: float) -> None:
        super().__init__(spec)
        self.width = width
        self.per_unit = per_unit
        self.slope = nn.Parameter(torch.full((width if per_unit else 1,), initial_slope))

    def forward(self, x: Tensor) -> Tensor:
        if self.per_unit and (x.dim() < 2 or x.shape[1] != self.width):
            raise ValueError(
                f"per-unit PReLU of {self.width} units got input of shape {tuple(x.shape)}; "
                "dimension 1 must be the units"
            )
        return F.prelu(x, self.slope)

    def parameter_values(self) -> ParameterValues:
        """The slope (mode layer) or a summary of the per-unit slopes (mode unit)."""
        slopes = self.slope.detach().double().cpu()
        if not self.per_unit:
            return {"slope": float(slopes[0])}
        return {
            "slope_mean": float(slopes.mean()),
            "slope_std": float(slopes.std(unbiased=False)),
            "slope_min": float(slopes.min()),
            "slope_max": float(slopes.max()),
        }

    def extra_repr(self) -> str:
        return f"label={self.label!r}, units={self.slope.numel()}"


class SwishBetaActivation(ActivationModule):
    """x * sigmoid(beta * x) with one learned beta per layer."""

    def __init__(self, spec: ActivationSpec, *, initial_beta: float) -> None:
        super().__init__(spec)
        self.beta = nn.Parameter(torch.tensor(initial_beta))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)

    def parameter_values(self) -> ParameterValues:
        """The current beta."""
        return {"beta": float(self.beta.detach())}


def _safe_abs(value: Tensor) -> Tensor:
    # Same value as abs, but the gradient at exactly 0 is +1 instead of 0, so coefficients that
    # start at 0 (b1 and b3 of the leaky-ReLU start) still learn.
    return torch.where(value >= 0, value, -value)


class PadeActivation(ActivationModule):
    """Pade activation unit P5/Q4 with the safe denominator 1 + sum_i |b_i x^i| (Molina et al. 2020).

    The denominator is at least 1, so the unit has no poles; in float32 it stays finite while
    |x|^5 does, i.e. for |x| up to about 4e7.
    """

    def __init__(self, spec: ActivationSpec, *, negative_slope: float) -> None:
        super().__init__(spec)
        numerator, denominator = pau_initial_coefficients(negative_slope)
        self.numerator = nn.Parameter(torch.tensor(numerator))
        self.denominator = nn.Parameter(torch.tensor(denominator))

    def forward(self, x: Tensor) -> Tensor:
        a = self.numerator
        b = _safe_abs(self.denominator)
        # Horner's rule; |b_i x^i| = |b_i| |x|^i, so the denominator is a polynomial in |x|.
        top = a[0] + x * (a[1] + x * (a[2] + x * (a[3] + x * (a[4] + x * a[5]))))
        magnitude = x.abs()
        bottom = 1.0 + magnitude * (b[0] + magnitude * (b[1] + magnitude * (b[2] + magnitude * b[3])))
        return top / bottom

    def parameter_values(self) -> ParameterValues:
        """The coefficients a0..a5 and b1..b4."""
        numerator = self.numerator.detach().double().cpu().tolist()
        denominator = self.denominator.detach().double().cpu().tolist()
        values: ParameterValues = {f"a{index}": value for index, value in enumerate(numerator)}
        values.update({f"b{index + 1}": value for index, value in enumerate(denominator)})
        return values


def _linear_parameters(out_features: int, in_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias initialised as nn.Linear does (Kaiming uniform with a = sqrt(5), bias U(+-1/sqrt(in)))."""
    weight = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1.0 / math.sqrt(in_features)
    bias = torch.empty(out_features).uniform_(-bound, bound)
    return nn.Parameter(weight), nn.Parameter(bias)


class InputConditionedActivation(ActivationModule):
    """A unit whose channel-wise coefficients come from its input through a small hyper-network.

    Channels are dimension 1: hidden units of (batch, width) inputs, feature maps of
    (batch, channels, *positions) inputs; the context is the input itself or its mean over positions.
    The hyper-network's own parameters are named ``hyper_*`` (not ``weight``), so the model's init
    scheme leaves them at their nn.Linear-style start, drawn from the seeded global stream.

    Coefficient statistics: every forward pass in eval mode adds the generated coefficients to running
    sums, which ``train(False)`` clears. Both trainers call ``model.eval()`` right before their
    diagnostics probe and read ``parameter_values()`` right after it, so the mean and std reported per
    epoch are over the probe set's examples and channels (and positions of an Elman recurrence).
    """

    def __init__(self, spec: ActivationSpec, *, width: int, coefficients: tuple[str, ...]) -> None:
        super().__init__(spec)
        hypernetwork = ACTIVATIONS[spec.canonical_name].hypernetwork
        assert hypernetwork is not None
        params = spec.resolved_params()
        self.width = width
        self.hidden = hypernetwork.hidden(width, params)
        self.coefficient_names = coefficients
        self.hyper_in_weight, self.hyper_in_bias = _linear_parameters(self.hidden, width)
        self.hyper_out_weight, self.hyper_out_bias = _linear_parameters(len(coefficients) * width, self.hidden)
        self._sums: Tensor | None = None
        self._squares: Tensor | None = None
        self._count = 0

    def context(self, x: Tensor) -> Tensor:
        """(batch, channels): the input averaged over positions, after checking dimension 1 is the channels."""
        if x.dim() < 2 or x.shape[1] != self.width:
            raise ValueError(
                f"{self.name} of {self.width} channels got input of shape {tuple(x.shape)}; "
                "dimension 1 must be the channels"
            )
        return x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x

    def broadcast(self, coefficients: Tensor, x: Tensor) -> Tensor:
        """(batch, channels, n) coefficients shaped to broadcast against x, coefficient index last."""
        return coefficients.reshape(*coefficients.shape[:2], *([1] * (x.dim() - 2)), coefficients.shape[2])

    def record(self, coefficients: Tensor) -> None:
        """Fold (batch, channels, n) coefficients into the eval-mode statistics."""
        if self.training:
            return
        values = coefficients.detach().double().reshape(-1, coefficients.shape[-1])
        sums, squares = values.sum(dim=0), values.square().sum(dim=0)
        self._sums = sums if self._sums is None else self._sums + sums
        self._squares = squares if self._squares is None else self._squares + squares
        self._count += values.shape[0]

    def train(self, mode: bool = True) -> InputConditionedActivation:
        if not mode:
            self._sums, self._squares, self._count = None, None, 0
        return super().train(mode)

    def coefficient_statistics(self) -> ParameterValues:
        """``<name>_mean`` and ``<name>_std`` of every generated coefficient since the module entered eval mode."""
        if self._sums is None or self._squares is None or self._count == 0:
            return {}
        mean = self._sums / self._count
        std = (self._squares / self._count - mean.square()).clamp(min=0.0).sqrt()
        values: ParameterValues = {}
        for name, average, spread in zip(self.coefficient_names, mean.tolist(), std.tolist(), strict=True):
            values[f"{name}_mean"] = average
            values[f"{name}_std"] = spread
        return values

    def parameter_values(self) -> ParameterValues:
        """Statistics of the generated coefficients (empty before any eval-mode pass)."""
        return self.coefficient_statistics()

    def extra_repr(self) -> str:
        return f"label={self.label!r}, channels={self.width}, hidden={self.hidden}"


class DynamicReLUActivation(InputConditionedActivation):
    """DY-ReLU-B (Chen et al. 2020): y_c = max_k (a_c^k x_c + b_c^k), coefficients from the input.

    theta = Linear(ReLU(Linear(context))) gives 2K values per channel, normalised by 2 sigmoid - 1
    to [-1, 1]; a^k = alpha^k + lambda_a theta_a^k and b^k = beta^k + lambda_b theta_b^k around the
    paper's initial values alpha = (1, 0, ...), beta = 0 (so a zero hyper-network output is ReLU).
    At a tie between pieces no gradient flows (as the custom ``max``), so at a zero hyper-network output
    the derivative at 0 is ReLU's 0.
    """

    def __init__(self, spec: ActivationSpec, *, width: int, pieces: int, lambda_a: float, lambda_b: float) -> None:
        names = tuple(f"a{k + 1}" for k in range(pieces)) + tuple(f"b{k + 1}" for k in range(pieces))
        super().__init__(spec, width=width, coefficients=names)
        self.pieces = pieces
        initial = torch.zeros(2 * pieces)
        initial[0] = 1.0
        scale = torch.tensor([lambda_a] * pieces + [lambda_b] * pieces)
        self.initial: Tensor
        self.scale: Tensor
        self.register_buffer("initial", initial, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def coefficients(self, x: Tensor) -> Tensor:
        """(batch, channels, 2K): a^1..a^K, then b^1..b^K of every example and channel."""
        hidden = torch.relu(F.linear(self.context(x), self.hyper_in_weight, self.hyper_in_bias))
        theta = 2.0 * torch.sigmoid(F.linear(hidden, self.hyper_out_weight, self.hyper_out_bias)) - 1.0
        return theta.view(x.shape[0], self.width, 2 * self.pieces) * self.scale + self.initial

    def forward(self, x: Tensor) -> Tensor:
        coefficients = self.coefficients(x)
        self.record(coefficients)
        shaped = self.broadcast(coefficients, x)
        best = x * shaped[..., 0] + shaped[..., self.pieces]
        for k in range(1, self.pieces):
            piece = x * shaped[..., k] + shaped[..., self.pieces + k]
            best = torch.where(best == piece, best.detach(), torch.maximum(best, piece))
        return best


class MetaAconActivation(InputConditionedActivation):
    """Meta-ACON-C (Ma et al. 2021): (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, beta from the input.

    beta = sigmoid(Linear(Linear(context))) per example and channel, as in the authors' code but
    without its BatchNorm layers (an example's output would depend on its batch); p1 and p2 are
    learned per channel from 1 and 0, so a zero hyper-network output starts as x sigmoid(0.5 x).
    """

    def __init__(self, spec: ActivationSpec, *, width: int) -> None:
        super().__init__(spec, width=width, coefficients=("beta",))
        self.p1 = nn.Parameter(torch.ones(width))
        self.p2 = nn.Parameter(torch.zeros(width))

    def coefficients(self, x: Tensor) -> Tensor:
        """(batch, channels, 1): beta of every example and channel."""
        hidden = F.linear(self.context(x), self.hyper_in_weight, self.hyper_in_bias)
        beta = torch.sigmoid(F.linear(hidden, self.hyper_out_weight, self.hyper_out_bias))
        return beta.unsqueeze(2)

    def forward(self, x: Tensor) -> Tensor:
        coefficients = self.coefficients(x)
        self.record(coefficients)
        beta = self.broadcast(coefficients, x)[..., 0]
        shape = (1, self.width, *([1] * (x.dim() - 2)))
        p1, p2 = self.p1.view(shape), self.p2.view(shape)
        difference = (p1 - p2) * x
        return difference * torch.sigmoid(beta * difference) + p2 * x

    def parameter_values(self) -> ParameterValues:
        """beta's statistics since eval mode began, and the mean and std of the learned p1 and p2."""
        values = self.coefficient_statistics()
        for name, parameter in (("p1", self.p1), ("p2", self.p2)):
            learned = parameter.detach().double().cpu()
            values[f"{name}_mean"] = float(learned.mean())
            values[f"{name}_std"] = float(learned.std(unbiased=False))
        return values


def _maximum(left: Tensor | float, right: Tensor | float) -> Tensor | float:
    # No gradient flows at ties, so max(x, 0) has ReLU's derivative 0 at 0 whichever side 0 is on.
    if not isinstance(left, Tensor) and not isinstance(right, Tensor):
        return max(left, right)
    if not isinstance(left, Tensor):
        left, right = right, left
    assert isinstance(left, Tensor)
    if not isinstance(right, Tensor):
        return torch.where(left > right, left, right)
    return torch.where(left == right, left.detach(), torch.maximum(left, right))


def _minimum(left: Tensor | float, right: Tensor | float) -> Tensor | float:
    # The mirror of _maximum: no gradient at ties.
    if not isinstance(left, Tensor) and not isinstance(right, Tensor):
        return min(left, right)
    if not isinstance(left, Tensor):
        left, right = right, left
    assert isinstance(left, Tensor)
    if not isinstance(right, Tensor):
        return torch.where(left < right, left, right)
    return torch.where(left == right, left.detach(), torch.minimum(left, right))


# Unary functions take a tensor; min and max also take plain numbers (see _maximum).
_EXPRESSION_FUNCTIONS: dict[str, Callable[..., Tensor | float]] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "abs": torch.abs,
    "erf": torch.erf,
    "softplus": F.softplus,
    "sin": torch.sin,
    "cos": torch.cos,
    "min": _minimum,
    "max": _maximum,
}


def _apply_operator(operator: str, left: Tensor | float, right: Tensor | float) -> Tensor | float:
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    if operator == "/":
        return left / right
    if operator == "**":
        return left**right
    raise AssertionError(f"operator {operator!r} passed the parser")


def _fold_constants(node: Node) -> Node:
    """Replace every subtree without variables by its value, computed with torch's float64 semantics."""
    if isinstance(node, Number | Variable):
        return node
    if isinstance(node, UnaryOperation):
        operand = _fold_constants(node.operand)
        if isinstance(operand, Number):
            return Number(operand.value if node.operator == "+" else -operand.value)
        return UnaryOperation(node.operator, operand)
    if isinstance(node, BinaryOperation):
        left = _fold_constants(node.left)
        right = _fold_constants(node.right)
        if isinstance(left, Number) and isinstance(right, Number):
            # Through torch, not Python floats: 1 / 0 is inf and (-8) ** 0.5 is nan, as in the forward pass.
            value = _apply_operator(node.operator, _constant(left.value), _constant(right.value))
            return Number(float(value))
        return BinaryOperation(node.operator, left, right)
    arguments = tuple(_fold_constants(argument) for argument in node.arguments)
    if all(isinstance(argument, Number) for argument in arguments):
        values = [_constant(argument.value) for argument in arguments if isinstance(argument, Number)]
        return Number(float(_EXPRESSION_FUNCTIONS[node.function](*values)))
    return Call(node.function, arguments)


def _constant(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


class CustomActivation(ActivationModule):
    """A formula over x from the safe expression language, evaluated with torch ops (never eval)."""

    def __init__(self, spec: ActivationSpec) -> None:
        super().__init__(spec)
        assert spec.expression is not None
        learnable = spec.learnable or {}
        self.expression = spec.expression
        self.tree = _fold_constants(parse_expression(spec.expression, learnable))
        # A fixed prefix keeps user names clear of nn.Module attributes such as "training" or "forward".
        self.scalar_names = tuple(learnable)
        for name, initial in learnable.items():
            self.register_parameter(f"scalar_{name}", nn.Parameter(torch.tensor(float(initial))))

    def scalar(self, name: str) -> Tensor:
        """The learnable scalar of that name."""
        return self.get_parameter(f"scalar_{name}")

    def forward(self, x: Tensor) -> Tensor:
        result = self._evaluate(self.tree, x)
        if not isinstance(result, Tensor):
            # The parser guarantees x occurs, but e.g. "0 * x" still gives a tensor; keep the shape promise anyway.
            return torch.full_like(x, result)
        return result

    def _evaluate(self, node: Node, x: Tensor) -> Tensor | float:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Variable):
            return x if node.name == "x" else self.scalar(node.name)
        if isinstance(node, UnaryOperation):
            operand = self._evaluate(node.operand, x)
            return -operand if node.operator == "-" else operand
        if isinstance(node, BinaryOperation):
            return _apply_operator(node.operator, self._evaluate(node.left, x), self._evaluate(node.right, x))
        arguments = [self._evaluate(argument, x) for argument in node.arguments]
        if EXPRESSION_FUNCTIONS[node.function] == 1:
            # Constant folding leaves no call on a bare number, but stay total.
            arguments = [
                argument if isinstance(argument, Tensor) else torch.full_like(x, argument) for argument in arguments
            ]
        return _EXPRESSION_FUNCTIONS[node.function](*arguments)

    def parameter_values(self) -> ParameterValues | None:
        """The learnable scalars by name, or None when the formula has none."""
        if not self.scalar_names:
            return None
        return {name: float(self.scalar(name).detach()) for name in self.scalar_names}

    def extra_repr(self) -> str:
        return f"label={self.label!r}, expression={self.expression!r}"


Builder = Callable[[ActivationSpec, dict[str, ParameterValue], int], ActivationModule]


def _fixed(function: Callable[..., Tensor], **bound: object) -> Builder:
    """A builder of an ElementwiseActivation; ``bound`` maps function keywords to catalog parameter names."""

    def build(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
        keywords = {keyword: params[str(parameter)] for keyword, parameter in bound.items()}
        bound_function = functools.partial(function, **keywords) if keywords else function
        return ElementwiseActivation(spec, bound_function)

    return build


def _build_prelu(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return PReLUActivation(spec, width=width, per_unit=params["mode"] == "unit", initial_slope=float(params["init"]))


def _build_swish_beta(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return SwishBetaActivation(spec, initial_beta=float(params["init"]))


def _build_pau(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return PadeActivation(spec, negative_slope=float(params["negative_slope"]))


def _build_dyrelu(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return DynamicReLUActivation(
        spec,
        width=width,
        pieces=int(params["pieces"]),
        lambda_a=float(params["lambda_a"]),
        lambda_b=float(params["lambda_b"]),
    )


def _build_meta_acon(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return MetaAconActivation(spec, width=width)


def _build_custom(spec: ActivationSpec, params: dict[str, ParameterValue], width: int) -> ActivationModule:
    return CustomActivation(spec)


_BUILDERS: dict[str, Builder] = {
    "sigmoid": _fixed(torch.sigmoid),
    "tanh": _fixed(torch.tanh),
    "relu": _fixed(torch.relu),
    "leaky_relu": _fixed(F.leaky_relu, negative_slope="negative_slope"),
    "elu": _fixed(F.elu, alpha="alpha"),
    "selu": _fixed(F.selu),
    "gelu": _fixed(F.gelu, approximate="approximate"),
    "silu": _fixed(F.silu),
    "mish": _fixed(F.mish),
    "softplus": _fixed(F.softplus, beta="beta", threshold="threshold"),
    "hardswish": _fixed(F.hardswish),
    "softsign": _fixed(F.softsign),
    "hardtanh": _fixed(F.hardtanh, min_val="min_val", max_val="max_val"),
    "relu6": _fixed(F.relu6),
    "celu": _fixed(F.celu, alpha="alpha"),
    "prelu": _build_prelu,
    "swish_beta": _build_swish_beta,
    "pau": _build_pau,
    "dyrelu": _build_dyrelu,
    "meta_acon": _build_meta_acon,
    "custom": _build_custom,
}


def build_activation(spec: ActivationSpec, *, width: int) -> ActivationModule:
    """Build the activation module of a validated spec for a layer of ``width`` units (dimension 1)."""
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    name = spec.canonical_name
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"no module for activation {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    params = spec.resolved_params()
    return builder(spec, params, width)
