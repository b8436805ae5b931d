"""Input-conditioned activations (dyrelu, meta_acon): values and gradients against direct formulas,
their start, their coefficient statistics, their plotted shapes, parameter counts, and training on digits.

The direct formulas below are written from the papers, independently of the modules: they read the
module's hyper-network parameters and nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from app.catalog import ACTIVATIONS, HYPERNETWORK_MIN_HIDDEN
from app.results.functions import learned_shape, starting_shape
from app.spec import ActivationSpec, ExperimentSpec
from app.spec_cost import estimate_parameters, forward_work
from tests.training.test_stacked import check_equivalence
from worker.training.activations import (
    DynamicReLUActivation,
    InputConditionedActivation,
    MetaAconActivation,
    build_activation,
)
from worker.training.datasets import load_dataset
from worker.training.models import build_model
from worker.training.stacked import can_stack
from worker.training.trainer import train_arm

SHAPES = [(6, 8), (6, 8, 11), (6, 8, 5, 4)]
"""MLP (batch, units), Conv1d (batch, channels, length) and Conv2d (batch, channels, height, width) inputs."""


def build(spec: Any, width: int) -> InputConditionedActivation:
    module = build_activation(ActivationSpec.model_validate(spec), width=width)
    assert isinstance(module, InputConditionedActivation)
    return module.double()


def direct_dyrelu(
    module: DynamicReLUActivation, x: torch.Tensor, pieces: int, lambdas: tuple[float, float]
) -> torch.Tensor:
    """Chen et al. 2020, DY-ReLU-B: y_c = max_k a_c^k x_c + b_c^k, coefficients from the pooled input."""
    batch, channels = x.shape[:2]
    pooled = x.reshape(batch, channels, -1).mean(dim=2)
    hidden = torch.clamp(pooled @ module.hyper_in_weight.T + module.hyper_in_bias, min=0.0)
    theta = hidden @ module.hyper_out_weight.T + module.hyper_out_bias
    residual = (2.0 / (1.0 + torch.exp(-theta)) - 1.0).reshape(batch, channels, 2 * pieces)
    alpha = [1.0] + [0.0] * (pieces - 1)
    outputs = []
    for k in range(pieces):
        a = alpha[k] + lambdas[0] * residual[:, :, k]
        b = lambdas[1] * residual[:, :, pieces + k]
        view = (batch, channels, *([1] * (x.dim() - 2)))
        outputs.append(a.reshape(view) * x + b.reshape(view))
    return torch.stack(outputs).max(dim=0).values


def direct_meta_acon(module: MetaAconActivation, x: torch.Tensor) -> torch.Tensor:
    """Ma et al. 2021, Meta-ACON-C: (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, beta from the pooled input."""
    batch, channels = x.shape[:2]
    pooled = x.reshape(batch, channels, -1).mean(dim=2)
    generated = (pooled @ module.hyper_in_weight.T + module.hyper_in_bias) @ module.hyper_out_weight.T
    beta = 1.0 / (1.0 + torch.exp(-(generated + module.hyper_out_bias)))
    view = (batch, channels, *([1] * (x.dim() - 2)))
    p1, p2 = module.p1.reshape(1, channels, *view[2:]), module.p2.reshape(1, channels, *view[2:])
    d = (p1 - p2) * x
    return d / (1.0 + torch.exp(-beta.reshape(view) * d)) + p2 * x


CASES: list[tuple[Any, Any]] = [
    ("dyrelu", lambda module, x: direct_dyrelu(module, x, 2, (1.0, 0.5))),
    (
        {"name": "dyrelu", "params": {"pieces": 3, "reduction": 2, "lambda_a": 2.0, "lambda_b": 1.5}},
        lambda module, x: direct_dyrelu(module, x, 3, (2.0, 1.5)),
    ),
    ("meta_acon", direct_meta_acon),
    ({"name": "meta_acon", "params": {"reduction": 1}}, direct_meta_acon),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_value_and_gradients_match_the_direct_formula(case: int, shape: tuple[int, ...]) -> None:
    spec, direct = CASES[case]
    torch.manual_seed(case)
    module = build(spec, width=shape[1])
    with torch.no_grad():
        if isinstance(module, MetaAconActivation):
            module.p1.uniform_(0.5, 1.5)
            module.p2.uniform_(-0.5, 0.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(shape, dtype=torch.float64)
    parameters = [x, *module.parameters()]
    y = module(x)
    expected = direct(module, x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    gradients = torch.autograd.grad((y * weights).sum(), parameters)
    expected_gradients = torch.autograd.grad((expected * weights).sum(), parameters)
    for gradient, reference in zip(gradients, expected_gradients, strict=True):
        torch.testing.assert_close(gradient, reference, rtol=1e-10, atol=1e-12)
    # And both against finite differences.
    assert torch.autograd.gradcheck(module, (x,))


def test_dynamic_relu_at_a_zero_hypernetwork_output_is_relu_with_its_derivative() -> None:
    module = build("dyrelu", width=3)
    with torch.no_grad():
        module.hyper_out_weight.zero_()
        module.hyper_out_bias.zero_()
    x = torch.tensor([[-2.0, 0.0, 1.5], [3.0, -0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    y = module(x)
    (gradient,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, torch.relu(x))
    # ReLU'(0) = 0 as for relu: no gradient at the tie of the two pieces.
    assert gradient.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_dynamic_relu_starts_near_relu_and_meta_acon_near_its_stated_start() -> None:
    # With the hyper-network's nn.Linear-style start the generated residuals are small but not zero.
    torch.manual_seed(0)
    x = torch.randn(256, 32, dtype=torch.float64)
    dyrelu = build("dyrelu", width=32)
    assert (dyrelu(x) - torch.relu(x)).abs().mean() < 0.2
    acon = build("meta_acon", width=32)
    assert (acon(x) - x * torch.sigmoid(0.5 * x)).abs().mean() < 0.1


@pytest.mark.parametrize(("name", "coefficients"), [("dyrelu", 4), ("meta_acon", 1)])
def test_coefficient_statistics_are_over_the_eval_mode_passes_since_eval(name: str, coefficients: int) -> None:
    torch.manual_seed(1)
    module = build(name, width=5)
    assert all(not key.endswith("_std") or key.startswith("p") for key in module.parameter_values())
    module.train()
    module(torch.randn(7, 5, 3, dtype=torch.float64))  # training passes are not recorded
    module.eval()
    first, second = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(9, 5, 3, dtype=torch.float64)
    module(first)
    module(second)
    with torch.no_grad():
        generated = torch.cat([module.coefficients(first), module.coefficients(second)]).reshape(-1, coefficients)
    values = module.parameter_values()
    for index, coefficient in enumerate(module.coefficient_names):
        assert values[f"{coefficient}_mean"] == pytest.approx(float(generated[:, index].mean()), rel=1e-12)
        assert values[f"{coefficient}_std"] == pytest.approx(float(generated[:, index].std(unbiased=False)), rel=1e-9)
    module.eval()  # entering eval mode again starts over
    assert not any(key.startswith(module.coefficient_names) for key in module.parameter_values())


def test_width_is_checked_against_dimension_one() -> None:
    module = build("dyrelu", width=4)
    with pytest.raises(ValueError, match="dimension 1 must be the channels"):
        module(torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="dimension 1 must be the channels"):
        module(torch.zeros(4, dtype=torch.float64))


def test_hypernetwork_width_follows_the_catalog_rule() -> None:
    assert build("dyrelu", width=64).hidden == 16
    assert build("dyrelu", width=6).hidden == HYPERNETWORK_MIN_HIDDEN
    assert build("meta_acon", width=64).hidden == HYPERNETWORK_MIN_HIDDEN
    assert build({"name": "meta_acon", "params": {"reduction": 2}}, width=64).hidden == 32


# One row per input-conditioned catalog activation: the curves the plots draw at a fixed context.
INPUT_CONDITIONED_SHAPES: dict[str, Any] = {
    "dyrelu": {"name": "dyrelu", "params": {"pieces": 3}},
    "meta_acon": "meta_acon",
}


def test_every_input_conditioned_activation_has_a_plot_shape_row() -> None:
    assert set(INPUT_CONDITIONED_SHAPES) == {name for name, info in ACTIVATIONS.items() if info.input_conditioned}


@pytest.mark.parametrize("name", sorted(INPUT_CONDITIONED_SHAPES))
def test_plotted_shapes_are_the_module_at_a_fixed_context(name: str) -> None:
    # A zero hyper-network weight makes the coefficients the same for every input: the module is then one
    # fixed function, the start at a zero output and the learned shape at its (constant) coefficients.
    spec = ActivationSpec.model_validate(INPUT_CONDITIONED_SHAPES[name])
    module = build(spec.model_dump(exclude_none=True), width=1)
    x = np.linspace(-3.0, 3.0, 61)
    inputs = torch.tensor(x).unsqueeze(1)
    with torch.no_grad():
        module.hyper_out_weight.zero_()
        module.hyper_out_bias.zero_()
    np.testing.assert_allclose(starting_shape(spec, x), module(inputs)[:, 0].detach().numpy(), rtol=0, atol=1e-12)
    with torch.no_grad():
        module.hyper_out_bias.copy_(torch.linspace(-1.0, 1.5, module.hyper_out_bias.numel()))
        for parameter in (getattr(module, "p1", None), getattr(module, "p2", None)):
            if parameter is not None:
                parameter.add_(0.25)
    module.eval()
    learned = module(inputs)[:, 0].detach().numpy()
    values = module.parameter_values()
    plotted = learned_shape(spec, {key: float(value) for key, value in values.items() if isinstance(value, float)}, x)
    np.testing.assert_allclose(plotted, learned, rtol=1e-12, atol=1e-12)


def experiment(model: dict[str, Any], activations: list[Any], **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": model,
            "activations": activations,
            "seeds": [0],
            "training": {"epochs": 2, "batch_size": 64, "lr": 0.01, **training},
            "device": "cpu",
        }
    )


MODELS: list[dict[str, Any]] = [
    {"kind": "mlp", "hidden": [32, 16]},
    {"kind": "cnn", "channels": [4, 8], "pooling": "max", "hidden": [12]},
    {"kind": "rnn", "cell": "rnn", "hidden_size": 10, "layers": 2},
    {"kind": "rnn", "cell": "gru", "hidden_size": 10, "head_hidden": 7},
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("activation", ["dyrelu", {"name": "dyrelu", "params": {"pieces": 3}}, "meta_acon"])
def test_parameter_count_matches_the_spec_estimate(model: dict[str, Any], activation: Any) -> None:
    spec = experiment(model, [activation])
    network = build_model(spec, spec.activations[0], input_shape=spec.dataset.input_shape, classes=10)
    assert network.parameter_count() == estimate_parameters(spec)


@pytest.mark.parametrize(
    "model", [{"kind": "mlp", "hidden": [32, 32]}, {"kind": "cnn", "channels": [6, 8], "pooling": "max"}]
)
def test_mlp_and_cnn_with_dynamic_relu_learn_digits_and_report_their_coefficients(model: dict[str, Any]) -> None:
    spec = experiment(model, ["dyrelu", "meta_acon"], epochs=3)
    data = load_dataset(spec.dataset)
    for index, names in ((0, ("a1", "a2", "b1", "b2")), (1, ("beta", "p1", "p2"))):
        outcome = train_arm(spec, activation_index=index, seed=0, data=data)
        assert outcome.status == "succeeded" and outcome.epochs_completed == 3
        last = outcome.reports[-1]
        assert last.test_accuracy > 0.7
        assert last.train_loss is not None and outcome.reports[0].train_loss is not None
        assert last.train_loss < outcome.reports[0].train_loss
        for layer in last.layers[:-1]:
            assert layer.activation_parameters is not None
            assert {f"{name}_{what}" for name in names for what in ("mean", "std")} <= set(layer.activation_parameters)
            assert all(value is not None for value in layer.activation_parameters.values())
        # The statistics move with training: the coefficients are not stuck at their start.
        first_layer = [report.layers[0].activation_parameters for report in outcome.reports]
        assert first_layer[0] != first_layer[-1]
        # Same seed, same numbers.
        again = train_arm(spec, activation_index=index, seed=0, data=data)
        assert [dataclasses.replace(r, epoch_seconds=0, samples_per_second=0) for r in again.reports] == [
            dataclasses.replace(r, epoch_seconds=0, samples_per_second=0) for r in outcome.reports
        ]


def test_elman_recurrence_uses_the_hidden_vector_per_step() -> None:
    spec = experiment({"kind": "rnn", "cell": "rnn", "hidden_size": 12}, ["dyrelu"], epochs=1)
    outcome = train_arm(spec, activation_index=0, seed=0, data=load_dataset(spec.dataset))
    assert outcome.status == "succeeded"
    parameters = outcome.reports[-1].layers[0].activation_parameters
    assert parameters is not None and parameters["a1_mean"] is not None


def test_stacked_training_gives_the_unstacked_numbers() -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "spirals", "params": {"samples": 500}},
            "model": {"kind": "mlp", "hidden": [12, 12]},
            "activations": ["relu", "dyrelu", "meta_acon"],
            "seeds": [0, 1],
            "training": {"epochs": 3, "batch_size": 64},
            "device": "cpu",
        }
    )
    assert can_stack(spec) == (True, "")
    outcomes = check_equivalence(spec)
    assert outcomes[2].reports[-1].layers[0].activation_parameters is not None


def test_stacked_conv_training_gives_the_unstacked_numbers() -> None:
    spec = experiment({"kind": "cnn", "channels": [3, 4], "pooling": "max"}, ["dyrelu", "meta_acon"], epochs=2)
    assert can_stack(spec) == (True, "")
    check_equivalence(spec)


def test_forward_work_counts_the_hypernetworks_by_hand() -> None:
    # dyrelu (K = 2, R = 4) on hidden widths 32 and 16: H = 8 and 4, outputs 4 x C per layer.
    mlp = {"kind": "mlp", "hidden": [32, 16]}
    by_hand = (32 * 8 + 8 * 4 * 32) + (16 * 4 + 4 * 4 * 16)
    assert forward_work(experiment(mlp, ["dyrelu"])).macs - forward_work(experiment(mlp, ["relu"])).macs == by_hand
    # An Elman layer runs it on each of its 8 steps (image rows of digits); the largest activation counts.
    rnn = {"kind": "rnn", "cell": "rnn", "hidden_size": 12}
    meta_acon = 8 * (12 * 4 + 4 * 12)
    difference = (
        forward_work(experiment(rnn, ["relu", "meta_acon"])).macs - forward_work(experiment(rnn, ["relu"])).macs
    )
    assert difference == meta_acon
