"""Every activation module against closed forms: values, autograd derivatives, metadata, learning."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.catalog import ACTIVATIONS, EXPRESSION_FUNCTIONS
from app.expressions import parse_expression
from app.results.functions import evaluate_expression, learned_shape, starting_shape
from app.spec import ActivationSpec
from worker.training.activations import (
    PAU_ABS_MAX_ERROR,
    PAU_FIT_RANGE,
    ActivationModule,
    CustomActivation,
    PadeActivation,
    PReLUActivation,
    build_activation,
    pau_initial_coefficients,
)

GRID = [-50.0, -20.0, -6.0, -3.0, -2.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 6.0, 20.0, 50.0]
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

Scalar = Callable[[float], float]


def build(spec: Any, width: int = 1) -> ActivationModule:
    return build_activation(ActivationSpec.model_validate(spec), width=width)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def gelu_tanh(x: float) -> float:
    return 0.5 * x * (1.0 + math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def gelu_tanh_derivative(x: float) -> float:
    inner = math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + inner) + 0.5 * x * (1.0 - inner**2) * SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x**2)


def mish_derivative(x: float) -> float:
    t = math.tanh(softplus(x))
    return t + x * (1.0 - t * t) * sigmoid(x)


def softplus_with(beta: float, threshold: float) -> tuple[Scalar, Scalar]:
    def value(x: float) -> float:
        return x if beta * x > threshold else softplus(beta * x) / beta

    def derivative(x: float) -> float:
        return 1.0 if beta * x > threshold else sigmoid(beta * x)

    return value, derivative


def hardswish(x: float) -> float:
    return 0.0 if x <= -3 else x if x >= 3 else x * (x + 3) / 6


def hardswish_derivative(x: float) -> float:
    # PyTorch's convention at the kinks: the outer pieces (0 at -3, 1 at 3).
    return 0.0 if x <= -3 else 1.0 if x >= 3 else (2 * x + 3) / 6


def clipped(low: float, high: float) -> tuple[Scalar, Scalar]:
    # Derivative 0 at both clip points, as in PyTorch's hardtanh and relu6.
    return (lambda x: min(max(x, low), high)), (lambda x: 1.0 if low < x < high else 0.0)


SOFTPLUS_DEFAULT = softplus_with(1.0, 20.0)
SOFTPLUS_SHARP = softplus_with(2.0, 5.0)
HARDTANH_DEFAULT = clipped(-1.0, 1.0)
HARDTANH_WIDE = clipped(-2.0, 1.5)
RELU6 = clipped(0.0, 6.0)

# (spec, value, derivative); the derivative at 0 of the ReLU family is the left piece's.
CLOSED_FORMS: dict[str, tuple[Any, Scalar, Scalar]] = {
    "sigmoid": ("sigmoid", sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
    "tanh": ("tanh", math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "relu": ("relu", lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0),
    "leaky_relu": (
        {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
        lambda x: x if x > 0 else 0.1 * x,
        lambda x: 1.0 if x > 0 else 0.1,
    ),
    "leaky_relu_default": ("leaky_relu", lambda x: x if x > 0 else 0.01 * x, lambda x: 1.0 if x > 0 else 0.01),
    "elu": (
        {"name": "elu", "params": {"alpha": 1.5}},
        lambda x: x if x > 0 else 1.5 * (math.exp(x) - 1),
        lambda x: 1.0 if x > 0 else 1.5 * math.exp(x),
    ),
    "selu": (
        "selu",
        lambda x: SELU_SCALE * (x if x > 0 else SELU_ALPHA * (math.exp(x) - 1)),
        lambda x: SELU_SCALE * (1.0 if x > 0 else SELU_ALPHA * math.exp(x)),
    ),
    "gelu": ("gelu", lambda x: x * normal_cdf(x), lambda x: normal_cdf(x) + x * normal_pdf(x)),
    "gelu_tanh": ({"name": "gelu", "params": {"approximate": "tanh"}}, gelu_tanh, gelu_tanh_derivative),
    "silu": ("silu", lambda x: x * sigmoid(x), lambda x: sigmoid(x) + x * sigmoid(x) * (1 - sigmoid(x))),
    "swish_alias": ("swish", lambda x: x * sigmoid(x), lambda x: sigmoid(x) + x * sigmoid(x) * (1 - sigmoid(x))),
    "mish": ("mish", lambda x: x * math.tanh(softplus(x)), mish_derivative),
    "softplus": ("softplus", *SOFTPLUS_DEFAULT),
    "softplus_sharp": ({"name": "softplus", "params": {"beta": 2.0, "threshold": 5.0}}, *SOFTPLUS_SHARP),
    "hardswish": ("hardswish", hardswish, hardswish_derivative),
    "softsign": ("softsign", lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2),
    "hardtanh": ("hardtanh", *HARDTANH_DEFAULT),
    "hardtanh_wide": ({"name": "hardtanh", "params": {"min_val": -2.0, "max_val": 1.5}}, *HARDTANH_WIDE),
    "relu6": ("relu6", *RELU6),
    "celu": (
        {"name": "celu", "params": {"alpha": 2.0}},
        lambda x: max(0.0, x) + min(0.0, 2.0 * (math.exp(x / 2.0) - 1)),
        lambda x: 1.0 if x > 0 else math.exp(x / 2.0),
    ),
    "prelu": (
        # Slopes are float32 parameters; 0.375 is exact there.
        {"name": "prelu", "params": {"init": 0.375}},
        lambda x: x if x > 0 else 0.375 * x,
        lambda x: 1.0 if x > 0 else 0.375,
    ),
    "swish_beta": (
        {"name": "swish_beta", "params": {"init": 1.5}},
        lambda x: x * sigmoid(1.5 * x),
        lambda x: sigmoid(1.5 * x) + 1.5 * x * sigmoid(1.5 * x) * (1 - sigmoid(1.5 * x)),
    ),
    "custom_gelu_approx": (
        {"name": "custom", "expression": "x * sigmoid(1.702 * x)"},
        lambda x: x * sigmoid(1.702 * x),
        lambda x: sigmoid(1.702 * x) + 1.702 * x * sigmoid(1.702 * x) * (1 - sigmoid(1.702 * x)),
    ),
    "custom_learnable_swish": (
        {"name": "custom", "expression": "x * sigmoid(beta * x)", "learnable": {"beta": 0.5}},
        lambda x: x * sigmoid(0.5 * x),
        lambda x: sigmoid(0.5 * x) + 0.5 * x * sigmoid(0.5 * x) * (1 - sigmoid(0.5 * x)),
    ),
    # max passes no gradient at a tie, so the derivative at 0 is 0 (not torch.maximum's 0.55).
    "custom_max_leaky": (
        {"name": "custom", "expression": "max(x, 0.1*x)"},
        lambda x: max(x, 0.1 * x),
        lambda x: 1.0 if x > 0 else 0.1 if x < 0 else 0.0,
    ),
    "custom_negative_square": ({"name": "custom", "expression": "-x ** 2"}, lambda x: -(x**2), lambda x: -2 * x),
    "custom_log_one_plus_exp": ({"name": "custom", "expression": "log(1 + exp(x))"}, softplus, sigmoid),
    "custom_softsign": (
        {"name": "custom", "expression": "x / (1 + abs(x))"},
        lambda x: x / (1 + abs(x)),
        lambda x: 1 / (1 + abs(x)) ** 2,
    ),
    "custom_every_function": (
        {
            "name": "custom",
            "expression": "exp(-abs(x)) + sqrt(x*x + 1) + erf(x) + sin(x) * cos(x) + tanh(x) + softplus(x) + relu(x)",
        },
        lambda x: (
            math.exp(-abs(x))
            + math.sqrt(x * x + 1)
            + math.erf(x)
            + math.sin(x) * math.cos(x)
            + math.tanh(x)
            + softplus(x)
            + max(x, 0.0)
        ),
        lambda x: (
            -math.copysign(1.0, x) * math.exp(-abs(x)) * (x != 0)  # abs'(0) = 0
            + x / math.sqrt(x * x + 1)
            + 2 / math.sqrt(math.pi) * math.exp(-x * x)
            + math.cos(2 * x)
            + 1
            - math.tanh(x) ** 2
            + sigmoid(x)
            + (1.0 if x > 0 else 0.0)
        ),
    ),
    "custom_constants": (
        {"name": "custom", "expression": "2 ** x * pi / e + x * exp(1) - 1 / 4"},
        lambda x: 2**x * math.pi / math.e + x * math.e - 0.25,
        lambda x: math.log(2) * 2**x * math.pi / math.e + math.e,
    ),
    "custom_min_max_identity": (
        {"name": "custom", "expression": "min(x, 0) + max(0, x)"},
        lambda x: x,
        lambda x: 0.0 if x == 0 else 1.0,
    ),
}


def values_and_derivatives(module: ActivationModule, points: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    module = module.double()
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = module(x)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), gradient


@pytest.mark.parametrize("case", sorted(CLOSED_FORMS))
def test_value_and_derivative_match_the_closed_form(case: str) -> None:
    spec, value, derivative = CLOSED_FORMS[case]
    points = [*GRID, -2.0, 1.5]
    y, gradient = values_and_derivatives(build(spec), points)
    expected_y = torch.tensor([value(x) for x in points], dtype=torch.float64)
    expected_gradient = torch.tensor([derivative(x) for x in points], dtype=torch.float64)
    torch.testing.assert_close(y, expected_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)


def test_every_catalog_activation_has_a_closed_form_test() -> None:
    tested = {ActivationSpec.model_validate(spec).canonical_name for spec, _, _ in CLOSED_FORMS.values()}
    # PAU has its own tests below; the input-conditioned units theirs in test_adaptive_activations.py.
    assert set(ACTIVATIONS) - tested == {"pau"} | {name for name, info in ACTIVATIONS.items() if info.input_conditioned}


def test_every_expression_function_of_the_catalog_has_a_closed_form_test() -> None:
    expressions = [
        spec["expression"] for spec, _, _ in CLOSED_FORMS.values() if isinstance(spec, dict) and "expression" in spec
    ]
    untested = {
        function for function in EXPRESSION_FUNCTIONS if not any(f"{function}(" in text for text in expressions)
    }
    assert untested == set()


@pytest.mark.parametrize("function", sorted(EXPRESSION_FUNCTIONS))
def test_plots_evaluate_every_expression_function_as_training_does(function: str) -> None:
    expression = f"{function}({', '.join(['x', '0.5 * x - 1'][: EXPRESSION_FUNCTIONS[function]])})"
    x = np.linspace(-3.0, 3.0, 61)
    trained = build({"name": "custom", "expression": expression}).double()(torch.tensor(x)).detach().numpy()
    plotted = evaluate_expression(parse_expression(expression), x, {})
    np.testing.assert_allclose(plotted, trained, rtol=1e-12, atol=1e-12)


# One row per catalog activation that can learn: the numpy curves the plots draw must be the module's function.
LEARNABLE_SHAPES: dict[str, Any] = {
    "prelu": {"name": "prelu", "params": {"init": 0.375}},
    "swish_beta": {"name": "swish_beta", "params": {"init": 1.5}},
    "pau": {"name": "pau", "params": {"negative_slope": 0.1}},
    "custom": {"name": "custom", "expression": "a * x + b * relu(x)", "learnable": {"a": 0.5, "b": 0.25}},
}


def test_every_activation_that_can_learn_has_a_plot_shape_row() -> None:
    # Input-conditioned units are drawn at a fixed context: test_adaptive_activations.py has their rows.
    assert set(LEARNABLE_SHAPES) == {
        name for name, info in ACTIVATIONS.items() if info.can_learn and not info.input_conditioned
    }


@pytest.mark.parametrize("name", sorted(LEARNABLE_SHAPES))
def test_plotted_starting_and_learned_shapes_are_the_modules_function(name: str) -> None:
    spec = ActivationSpec.model_validate(LEARNABLE_SHAPES[name])
    x = np.linspace(-PAU_FIT_RANGE, PAU_FIT_RANGE, 61)
    module = build_activation(spec, width=1).double()
    start = module(torch.tensor(x)).detach().numpy()
    # PAU starts as an approximation of its leaky ReLU, which is what the plot draws as its start.
    tolerance = PAU_ABS_MAX_ERROR if name == "pau" else 1e-12
    np.testing.assert_allclose(starting_shape(spec, x), start, rtol=0, atol=tolerance)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.125)
    learned = module(torch.tensor(x)).detach().numpy()
    values = module.parameter_values()
    assert values is not None
    plotted = learned_shape(spec, {key: float(value) for key, value in values.items() if isinstance(value, float)}, x)
    np.testing.assert_allclose(plotted, learned, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "expression",
    ["relu(x)", "max(x, 0)", "max(0, x)", "max(x, 0 * x)", "max(0.0, x) * 1", "-min(-x, 0)"],
)
def test_relu_written_any_way_has_zero_derivative_at_zero(expression: str) -> None:
    module = build({"name": "custom", "expression": expression})
    y, gradient = values_and_derivatives(module, [-1.0, 0.0, 1.0])
    assert y.tolist() == [0.0, 0.0, 1.0]
    assert gradient.tolist() == [0.0, 0.0, 1.0]
    _, builtin_gradient = values_and_derivatives(build("relu"), [0.0])
    assert builtin_gradient.item() == 0.0


def pau_value_and_derivative(numerator: list[float], denominator: list[float], x: float) -> tuple[float, float]:
    top = sum(a * x**i for i, a in enumerate(numerator))
    top_derivative = sum(i * a * x ** (i - 1) for i, a in enumerate(numerator) if i > 0)
    bottom = 1 + sum(abs(b * x ** (i + 1)) for i, b in enumerate(denominator))
    # d/dx |b x^i| = |b| i |x|^(i-1) sign(x)
    sign = (x > 0) - (x < 0)
    bottom_derivative = sum(abs(b) * (i + 1) * abs(x) ** i * sign for i, b in enumerate(denominator))
    return top / bottom, (top_derivative * bottom - top * bottom_derivative) / bottom**2


@pytest.mark.parametrize(
    ("numerator", "denominator"),
    [
        ([0.1, 0.9, -0.3, 0.05, 0.02, -0.01], [0.5, -0.2, 0.1, -0.05]),
        ([-0.2, 1.1, 0.4, -0.6, 0.3, 0.07], [-1.3, 0.4, -0.02, 0.2]),
    ],
)
def test_pau_value_and_derivative_match_the_rational_function(numerator: list[float], denominator: list[float]) -> None:
    module = build("pau").double()
    assert isinstance(module, PadeActivation)
    with torch.no_grad():
        module.numerator.copy_(torch.tensor(numerator, dtype=torch.float64))
        module.denominator.copy_(torch.tensor(denominator, dtype=torch.float64))
    points = [-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0]
    y, gradient = values_and_derivatives(module, points)
    expected = [pau_value_and_derivative(numerator, denominator, x) for x in points]
    torch.testing.assert_close(y, torch.tensor([e[0] for e in expected], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        gradient, torch.tensor([e[1] for e in expected], dtype=torch.float64), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 0.3, 1.0])
def test_pau_starts_close_to_leaky_relu(slope: float) -> None:
    module = build({"name": "pau", "params": {"negative_slope": slope}}).double()
    x = torch.linspace(-PAU_FIT_RANGE, PAU_FIT_RANGE, 2001, dtype=torch.float64)
    with torch.no_grad():
        error = (module(x) - F.leaky_relu(x, slope)).abs().max().item()
    # The closed-form start inherits the |x| fit's error, scaled by (1 - slope) / 2.
    assert error <= (1 - slope) / 2 * PAU_ABS_MAX_ERROR + 1e-6
    assert error < 0.0135


def test_pau_initial_coefficients_are_deterministic_and_reported() -> None:
    first = build("pau").parameter_values()
    second = build("pau").parameter_values()
    assert first == second
    numerator, denominator = pau_initial_coefficients(0.01)
    assert first is not None
    assert [first[f"a{i}"] for i in range(6)] == pytest.approx(numerator, rel=1e-6)
    assert [first[f"b{i}"] for i in range(1, 5)] == pytest.approx(denominator, rel=1e-6)


def test_prelu_per_unit_slopes_broadcast_over_dimension_one() -> None:
    module = build({"name": "prelu", "params": {"mode": "unit", "init": 0.1}}, width=3)
    assert isinstance(module, PReLUActivation)
    with torch.no_grad():
        module.slope.copy_(torch.tensor([0.1, 0.2, 0.3]))
    images = -torch.ones(2, 3, 4, 4)
    for row in module(images)[:, :, 1, 2].tolist():
        assert row == pytest.approx([-0.1, -0.2, -0.3])
    features = -torch.ones(5, 3)
    assert module(features)[0].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    values = module.parameter_values()
    assert values == pytest.approx(
        {"slope_mean": 0.2, "slope_std": math.sqrt(2 / 300), "slope_min": 0.1, "slope_max": 0.3}
    )
    with pytest.raises(ValueError, match="3 units"):
        module(torch.ones(5, 4))


def test_prelu_unit_derivative_per_unit() -> None:
    module = build({"name": "prelu", "params": {"mode": "unit"}}, width=2).double()
    assert isinstance(module, PReLUActivation)
    with torch.no_grad():
        module.slope.copy_(torch.tensor([0.5, -0.25]))
    x = torch.tensor([[-2.0, -2.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    y = module(x)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    assert y.tolist() == [[-1.0, 0.5], [0.0, 0.0], [3.0, 3.0]]
    assert gradient.tolist() == [[0.5, -0.25], [0.5, -0.25], [1.0, 1.0]]


LARGE = [-1e4, -1e3, -100.0, -30.0, 0.0, 30.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_no_nan_or_inf_for_large_inputs_in_float32(name: str) -> None:
    spec: Any = (
        {"name": "custom", "expression": "x * sigmoid(beta * x) + softplus(x)", "learnable": {"beta": 1.0}}
        if name == "custom"
        else name
    )
    module = build(spec, width=len(LARGE))
    x = torch.tensor([LARGE], dtype=torch.float32, requires_grad=True)
    y = module(x)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all(), y
    assert torch.isfinite(gradient).all(), gradient


def test_saturating_and_smooth_units_reach_their_limits_at_large_inputs() -> None:
    x = torch.tensor([-1e4, 1e4])
    assert build("sigmoid")(x).tolist() == [0.0, 1.0]
    assert build("softplus")(x).tolist() == [0.0, 1e4]
    assert build("mish")(x).tolist() == [0.0, 1e4]
    assert build("tanh")(x).tolist() == [-1.0, 1.0]


def test_custom_log_of_negative_gives_nan_rather_than_an_exception() -> None:
    module = build({"name": "custom", "expression": "log(x) + sqrt(x)"})
    y = module(torch.tensor([-1.0, 1.0]))
    assert math.isnan(y[0].item())
    assert y[1].item() == 1.0


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_metadata_comes_from_the_catalog(name: str) -> None:
    spec: Any = {"name": "custom", "expression": "x"} if name == "custom" else name
    module = build(spec, width=4)
    info = ACTIVATIONS[name]
    assert isinstance(module, ActivationModule)
    assert module.name == name
    assert module.can_die == info.can_die
    assert module.saturation == info.saturation
    assert module.label == ActivationSpec.model_validate(spec).display_label
    values = module.parameter_values()
    assert (values is not None) == info.learnable
    json.dumps(values)  # reports store them as JSON


def test_alias_and_label() -> None:
    swish = build("swish")
    assert (swish.name, swish.label) == ("silu", "swish")
    labelled = build({"name": "leaky_relu", "params": {"negative_slope": 0.2}, "label": "lrelu"})
    assert (labelled.name, labelled.label) == ("leaky_relu", "lrelu")
    assert build({"name": "elu", "params": {"alpha": 0.5}}).label == "elu(alpha=0.5)"


def test_custom_learnable_names_that_clash_with_module_attributes_still_work() -> None:
    module = build(
        {"name": "custom", "expression": "training * x + forward", "learnable": {"training": 2.0, "forward": 1.0}}
    )
    assert isinstance(module, CustomActivation)
    assert module(torch.tensor([3.0])).item() == 7.0
    assert module.parameter_values() == {"training": 2.0, "forward": 1.0}
    assert module.training is True
    assert sorted(name for name, _ in module.named_parameters()) == ["scalar_forward", "scalar_training"]


def test_build_rejects_a_zero_width() -> None:
    with pytest.raises(ValueError, match="width"):
        build("relu", width=0)


def test_modules_copy_with_their_state() -> None:
    for spec in ("pau", {"name": "custom", "expression": "x * sigmoid(b * x)", "learnable": {"b": 2.0}}, "elu"):
        module = build(spec)
        clone = copy.deepcopy(module)
        x = torch.linspace(-2, 2, 9)
        assert torch.equal(module(x), clone(x))


def fit(module: ActivationModule, target: torch.Tensor, x: torch.Tensor, steps: int = 40) -> tuple[float, float]:
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    losses = []
    for step in range(steps):
        optimiser.zero_grad()
        loss = F.mse_loss(module(x), target)
        loss.backward()
        if step == 0:
            for name, parameter in module.named_parameters():
                assert parameter.grad is not None, name
                assert torch.isfinite(parameter.grad).all(), name
                assert parameter.grad.abs().sum() > 0, name
        optimiser.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


X_TRAIN = torch.linspace(-3, 3, 64).unsqueeze(1)


@pytest.mark.parametrize(
    ("spec", "target", "key", "direction"),
    [
        ({"name": "prelu", "params": {"init": 0.25}}, F.leaky_relu(X_TRAIN, 0.6), "slope", 1),
        ({"name": "swish_beta", "params": {"init": 1.0}}, X_TRAIN * torch.sigmoid(3 * X_TRAIN), "beta", 1),
        (
            {"name": "custom", "expression": "x * sigmoid(beta * x)", "learnable": {"beta": 1.0}},
            X_TRAIN * torch.sigmoid(0.2 * X_TRAIN),
            "beta",
            -1,
        ),
        ({"name": "pau"}, torch.tanh(X_TRAIN), "a1", 0),
    ],
)
def test_learnable_parameters_get_gradients_and_learn(
    spec: Any, target: torch.Tensor, key: str, direction: int
) -> None:
    module = build(spec)
    before = module.parameter_values()
    assert before is not None
    first, last = fit(module, target, X_TRAIN)
    after = module.parameter_values()
    assert after is not None
    assert last < 0.5 * first
    assert after[key] != before[key]
    if direction:
        assert (after[key] - before[key]) * direction > 0  # type: ignore[operator]


def test_pau_denominator_coefficients_that_start_at_zero_still_learn() -> None:
    module = build("pau")
    fit(module, torch.tanh(X_TRAIN), X_TRAIN)
    values = module.parameter_values()
    assert values is not None
    assert values["b1"] != 0.0
    assert values["b3"] != 0.0


def test_prelu_per_unit_slopes_learn_separately() -> None:
    module = build({"name": "prelu", "params": {"mode": "unit", "init": 0.25}}, width=3)
    assert isinstance(module, PReLUActivation)
    x = torch.linspace(-3, 3, 64).unsqueeze(1).repeat(1, 3)
    target = torch.where(x > 0, x, x * torch.tensor([0.0, 0.25, 0.8]))
    fit(module, target, x, steps=60)
    slopes = module.slope.detach()
    assert slopes[0] < 0.2
    assert slopes[2] > 0.3
    assert abs(slopes[1].item() - 0.25) < 0.05


def test_custom_with_two_learnable_scalars() -> None:
    module = build({"name": "custom", "expression": "a * x + b * relu(x)", "learnable": {"a": 0.5, "b": 0.0}})
    first, last = fit(module, F.leaky_relu(X_TRAIN, 0.1), X_TRAIN, steps=200)
    values = module.parameter_values()
    assert values is not None
    assert last < 0.01 * first
    assert values["a"] == pytest.approx(0.1, abs=0.05)
    assert values["b"] == pytest.approx(0.9, abs=0.05)
