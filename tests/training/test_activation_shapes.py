"""Guard: every catalog activation has numpy closed forms (app.activation_shapes) that match its torch module.

Values and autograd derivatives agree to 1e-6 on a grid that holds every kink, for each activation at
default and non-default parameters, learnable units at their start and at moved parameters, the
input-conditioned units at a fixed context (a hyper-network whose output weights are zero, so its
coefficients are the same for every input) and custom formulas over every function of the language.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from app import activation_shapes
from app.catalog import ACTIVATIONS, EXPRESSION_FUNCTIONS
from app.spec import ActivationSpec
from worker.training.activations import ActivationModule, InputConditionedActivation, build_activation

TOLERANCE = 1e-6
KINKS = [-6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 6.0]
GRID = np.unique(np.concatenate([np.linspace(-8.0, 8.0, 97), KINKS, [-50.0, -20.0, 19.5, 20.5, 25.0, 50.0]]))

CASES: dict[str, list[dict[str, Any]]] = {
    "sigmoid": [{}],
    "tanh": [{}],
    "relu": [{}],
    "leaky_relu": [{}, {"negative_slope": 0.3}],
    "elu": [{}, {"alpha": 0.5}],
    "selu": [{}],
    "gelu": [{}, {"approximate": "tanh"}],
    "silu": [{}],
    "mish": [{}],
    "softplus": [{}, {"beta": 2.0, "threshold": 10.0}],
    "hardswish": [{}],
    "softsign": [{}],
    "hardtanh": [{}, {"min_val": -0.5, "max_val": 2.0}],
    "relu6": [{}],
    "celu": [{}, {"alpha": 2.0}],
    "prelu": [{}, {"init": -0.2}],
    "swish_beta": [{}, {"init": 2.5}],
    "pau": [{}, {"negative_slope": 0.2}],
    "dyrelu": [{}, {"pieces": 3, "lambda_a": 0.5, "lambda_b": 0.25}],
    "meta_acon": [{}],
}
FORMULAS: list[tuple[str, dict[str, float]]] = [
    ("exp(-x) + log(1 + x * x) + sqrt(abs(x) + 1)", {}),
    ("tanh(x) * sigmoid(x) + relu(x) - abs(x)", {}),
    ("erf(x) + softplus(x) + sin(x) * cos(x)", {}),
    ("max(x, 0) + min(x, 0.5 * x) + max(0, -x) / 2", {}),
    ("a * x ** 3 - b * x ** 2 + x / (1 + x * x)", {"a": 0.25, "b": 1.5}),
    ("x * sigmoid(beta * x)", {"beta": 1.25}),
    ("exp(x) ** a", {"a": 0.5}),
    ("(x * x + 1) ** (0.5 * sigmoid(x))", {}),
    ("2 ** x - e ** (x / pi)", {}),
]


def _torch_curves(module: ActivationModule) -> tuple[np.ndarray, np.ndarray]:
    points = torch.tensor(GRID, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    output = module(points)
    (gradient,) = torch.autograd.grad(output.sum(), points)
    return output.detach().squeeze(1).numpy(), gradient.squeeze(1).numpy()


def _compare(spec: ActivationSpec, module: ActivationModule, coefficients: dict[str, float] | None) -> None:
    value, slope = activation_shapes.curves(spec, GRID, coefficients)
    expected_value, expected_slope = _torch_curves(module)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=TOLERANCE, err_msg=f"{spec.name} f(x)")
    np.testing.assert_allclose(slope, expected_slope, rtol=0, atol=TOLERANCE, err_msg=f"{spec.name} f'(x)")


def _learned_coefficients(spec: ActivationSpec, module: ActivationModule) -> dict[str, float]:
    """The module's current values read back as the engine stores them (after an eval pass for hyper-networks)."""
    if isinstance(module, InputConditionedActivation):
        module.eval()
        with torch.no_grad():
            module(torch.tensor(GRID, dtype=torch.float64).unsqueeze(1))
    values = module.parameter_values() or {}
    stored = {key: float(value) for key, value in values.items() if isinstance(value, float)}
    coefficients = activation_shapes.stored_coefficients(spec, stored)
    assert coefficients is not None, f"{spec.name}: stored values {sorted(stored)} give no coefficients"
    return coefficients


def _fixed_context(module: ActivationModule) -> None:
    # Zero output weights: the generated coefficients are the output bias's, for every input.
    if isinstance(module, InputConditionedActivation):
        with torch.no_grad():
            module.hyper_out_weight.zero_()
            module.hyper_out_bias.zero_()


def test_every_catalog_activation_has_closed_forms_and_a_case() -> None:
    assert set(activation_shapes.SHAPES) == set(ACTIVATIONS)
    assert set(CASES) | {"custom"} == set(ACTIVATIONS)
    assert set(EXPRESSION_FUNCTIONS) == activation_shapes.EXPRESSION_FUNCTION_NAMES
    used = {name for formula, _ in FORMULAS for name in EXPRESSION_FUNCTIONS if f"{name}(" in formula}
    assert used == set(EXPRESSION_FUNCTIONS)


@pytest.mark.parametrize(
    ("name", "params"), [(name, params) for name, cases in CASES.items() for params in cases], ids=str
)
def test_closed_forms_match_the_torch_module(name: str, params: dict[str, Any]) -> None:
    torch.manual_seed(0)
    spec = ActivationSpec.model_validate({"name": name, "params": params})
    module = build_activation(spec, width=1).double()
    _fixed_context(module)
    if not ACTIVATIONS[name].can_learn:
        _compare(spec, module, None)
        return
    # The start values the gallery draws are the module's (PAU's are stored in float32, hence approx),
    # compared at the module's own values; then at moved parameters (and generated coefficients) as stored.
    start = _learned_coefficients(spec, module)
    assert activation_shapes.initial_coefficients(spec) == pytest.approx(start, rel=1e-6, abs=1e-7)
    _compare(spec, module, start)
    module.train()
    with torch.no_grad():
        for index, parameter in enumerate(module.parameters()):
            if not (isinstance(module, InputConditionedActivation) and parameter is module.hyper_out_weight):
                parameter.add_(0.15 * (-1) ** index + 0.05 * torch.arange(parameter.numel()).view_as(parameter))
    coefficients = _learned_coefficients(spec, module)
    assert coefficients != pytest.approx(activation_shapes.initial_coefficients(spec))
    _compare(spec, module, coefficients)


@pytest.mark.parametrize(("expression", "learnable"), FORMULAS, ids=[formula for formula, _ in FORMULAS])
def test_custom_formulas_and_their_exact_derivatives_match_autograd(
    expression: str, learnable: dict[str, float]
) -> None:
    spec = ActivationSpec.model_validate({"name": "custom", "expression": expression, "learnable": learnable or None})
    module = build_activation(spec, width=1).double()
    _compare(spec, module, None)
    if learnable:
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(0.25)
        _compare(spec, module, _learned_coefficients(spec, module))
