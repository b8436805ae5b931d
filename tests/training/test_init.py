"""Init schemes: the weight statistics each one promises, what 'auto' picks, and what is left alone.

Tolerances: a layer of 512 inputs x 2048 outputs has n = 1,048,576 weights. The sample variance
of n normal draws has a relative standard deviation of sqrt(2 / n) = 0.14% (sqrt(0.8 / n) = 0.09%
for uniform draws), so a 1.5% tolerance is over ten standard deviations wide, while every wrong
choice tested here (another gain, fan or slope) moves the variance by 6% or more.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from app.catalog import ACTIVATIONS, AUTO_INIT_DESCRIPTIONS
from app.spec import ActivationSpec
from worker.training.activations import build_activation
from worker.training.init import initialise, recommended_gain, resolve_init_scheme

FAN_IN = 512
FAN_OUT = 2048
TOLERANCE = 0.015


def activation(spec: Any) -> ActivationSpec:
    return ActivationSpec.model_validate(spec)


def initialised_linear(scheme: str, spec: Any, seed: int = 0) -> tuple[torch.Tensor, str]:
    torch.manual_seed(seed)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    description = initialise(layer, scheme=scheme, activation=activation(spec))
    return layer.weight.detach().double(), description


def kurtosis(weights: torch.Tensor) -> float:
    centred = weights - weights.mean()
    return float(centred.pow(4).mean() / centred.pow(2).mean() ** 2)


@pytest.mark.parametrize(
    ("spec", "description", "variance"),
    [
        ("sigmoid", "xavier_normal(gain=1)", 2 / (FAN_IN + FAN_OUT)),
        ("tanh", "xavier_normal(gain=1.667)", (5 / 3) ** 2 * 2 / (FAN_IN + FAN_OUT)),
        ("softsign", "xavier_normal(gain=1.667)", (5 / 3) ** 2 * 2 / (FAN_IN + FAN_OUT)),
        ("relu", "kaiming_normal(relu)", 2 / FAN_IN),
        ("gelu", "kaiming_normal(relu)", 2 / FAN_IN),
        ("silu", "kaiming_normal(relu)", 2 / FAN_IN),
        (
            {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
            "kaiming_normal(leaky_relu, a=0.1)",
            2 / (1 + 0.1**2) / FAN_IN,
        ),
        (
            {"name": "leaky_relu", "params": {"negative_slope": 0.5}},
            "kaiming_normal(leaky_relu, a=0.5)",
            2 / (1 + 0.5**2) / FAN_IN,
        ),
        ("prelu", "kaiming_normal(leaky_relu, a=0.25)", 2 / (1 + 0.25**2) / FAN_IN),
        ("selu", "lecun_normal", 1 / FAN_IN),
        ({"name": "custom", "expression": "x * sigmoid(x)"}, "kaiming_normal(relu)", 2 / FAN_IN),
    ],
)
def test_auto_picks_the_scheme_of_the_activation(spec: Any, description: str, variance: float) -> None:
    weights, described = initialised_linear("auto", spec)
    assert described == description
    assert resolve_init_scheme("auto", activation(spec)) == description
    assert weights.var().item() == pytest.approx(variance, rel=TOLERANCE)
    assert abs(weights.mean().item()) < 5 * math.sqrt(variance / weights.numel())
    assert kurtosis(weights) == pytest.approx(3.0, abs=0.05)  # normal, not uniform


@pytest.mark.parametrize(
    ("scheme", "spec", "description", "variance"),
    [
        ("xavier_normal", "relu", "xavier_normal(gain=1.414)", 2 * 2 / (FAN_IN + FAN_OUT)),
        ("xavier_normal", "selu", "xavier_normal(gain=0.75)", 0.75**2 * 2 / (FAN_IN + FAN_OUT)),
        ("xavier_normal", "gelu", "xavier_normal(gain=1.414)", 2 * 2 / (FAN_IN + FAN_OUT)),
        (
            "xavier_normal",
            {"name": "leaky_relu", "params": {"negative_slope": 0.5}},
            "xavier_normal(gain=1.265)",
            2 / 1.25 * 2 / (FAN_IN + FAN_OUT),
        ),
        ("kaiming_normal", "tanh", "kaiming_normal(relu)", 2 / FAN_IN),
        ("kaiming_normal", "sigmoid", "kaiming_normal(relu)", 2 / FAN_IN),
        ("lecun_normal", "relu", "lecun_normal", 1 / FAN_IN),
    ],
)
def test_explicit_normal_schemes_give_their_variance(scheme: str, spec: Any, description: str, variance: float) -> None:
    weights, described = initialised_linear(scheme, spec)
    assert described == description
    assert weights.var().item() == pytest.approx(variance, rel=TOLERANCE)
    assert kurtosis(weights) == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize(
    ("scheme", "spec", "description", "bound"),
    [
        ("xavier_uniform", "tanh", "xavier_uniform(gain=1.667)", 5 / 3 * math.sqrt(6 / (FAN_IN + FAN_OUT))),
        ("xavier_uniform", "sigmoid", "xavier_uniform(gain=1)", math.sqrt(6 / (FAN_IN + FAN_OUT))),
        ("kaiming_uniform", "relu", "kaiming_uniform(relu)", math.sqrt(2) * math.sqrt(3 / FAN_IN)),
        (
            "kaiming_uniform",
            {"name": "prelu", "params": {"init": 0.5}},
            "kaiming_uniform(leaky_relu, a=0.5)",
            math.sqrt(2 / 1.25) * math.sqrt(3 / FAN_IN),
        ),
    ],
)
def test_uniform_schemes_fill_their_interval(scheme: str, spec: Any, description: str, bound: float) -> None:
    weights, described = initialised_linear(scheme, spec)
    assert described == description
    assert weights.abs().max().item() <= bound * (1 + 1e-6)
    assert weights.abs().max().item() > 0.99 * bound
    assert weights.var().item() == pytest.approx(bound**2 / 3, rel=TOLERANCE)
    assert kurtosis(weights) == pytest.approx(1.8, abs=0.05)


@pytest.mark.parametrize(
    ("spec", "gain", "rows", "columns"),
    [("relu", math.sqrt(2), 128, 128), ("tanh", 5 / 3, 64, 192), ("selu", 0.75, 128, 128), ("sigmoid", 1.0, 64, 192)],
)
def test_orthogonal_rows_are_orthonormal_times_the_gain(spec: Any, gain: float, rows: int, columns: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(columns, rows)
    described = initialise(layer, scheme="orthogonal", activation=activation(spec))
    assert described == f"orthogonal(gain={gain:.4g})"
    weights = layer.weight.detach().double()
    torch.testing.assert_close(weights @ weights.T, gain**2 * torch.eye(rows, dtype=torch.float64), atol=1e-5, rtol=0)


def test_recommended_gains() -> None:
    assert recommended_gain(activation("sigmoid")) == 1.0
    assert recommended_gain(activation("tanh")) == pytest.approx(5 / 3)
    assert recommended_gain(activation("hardtanh")) == pytest.approx(5 / 3)
    assert recommended_gain(activation("relu")) == pytest.approx(math.sqrt(2))
    assert recommended_gain(activation("mish")) == pytest.approx(math.sqrt(2))
    assert recommended_gain(activation({"name": "leaky_relu", "params": {"negative_slope": 0.2}})) == pytest.approx(
        math.sqrt(2 / 1.04)
    )
    assert recommended_gain(activation("selu")) == 0.75
    assert recommended_gain(activation("selu")) == pytest.approx(nn.init.calculate_gain("selu"))


@pytest.mark.parametrize("name", sorted(name for name, info in ACTIVATIONS.items() if name != "custom"))
def test_auto_gives_every_catalog_activation_the_scheme_the_catalog_describes(name: str) -> None:
    # A leaky-ReLU-initialised activation must name its slope parameter in the catalog, or "auto"
    # would silently fall back to the ReLU form; with the default slope it reads the same.
    info = ACTIVATIONS[name]
    described = resolve_init_scheme("auto", activation(name))
    if info.auto_init == "kaiming_leaky_relu":
        assert info.slope_parameter is not None
        slope = next(parameter.default for parameter in info.parameters if parameter.name == info.slope_parameter)
        assert described == f"kaiming_normal(leaky_relu, a={slope:g})"
    else:
        assert described.split("(")[0] == AUTO_INIT_DESCRIPTIONS[info.auto_init].split("(")[0]


class Network(nn.Module):
    """Conv, norm, activation and linear layers as the engine's models combine them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(64, 128, 5)
        self.conv1d = nn.Conv1d(64, 128, 5)
        self.batch_norm = nn.BatchNorm2d(128)
        self.layer_norm = nn.LayerNorm(128)
        self.activation = build_activation(activation({"name": "prelu", "params": {"mode": "unit"}}), width=128)
        self.pau = build_activation(activation("pau"), width=128)
        self.linear = nn.Linear(128, 10)


def test_conv_weights_use_their_receptive_field_and_the_rest_is_left_alone() -> None:
    torch.manual_seed(0)
    network = Network()
    with torch.no_grad():
        for norm in (network.batch_norm, network.layer_norm):
            norm.weight.fill_(0.7)
            norm.bias.fill_(0.3)
    pau_before = network.pau.state_dict()
    initialise(network, scheme="kaiming_normal", activation=activation("relu"))
    fan_in = 64 * 5 * 5
    assert network.conv2d.weight.var().item() == pytest.approx(2 / fan_in, rel=0.02)  # n = 204,800
    fan_in_1d = 64 * 5
    assert network.conv1d.weight.var().item() == pytest.approx(2 / fan_in_1d, rel=0.05)  # n = 40,960
    for layer in (network.conv2d, network.conv1d, network.linear):
        assert layer.bias is not None
        assert torch.count_nonzero(layer.bias) == 0
    for norm in (network.batch_norm, network.layer_norm):
        assert torch.all(norm.weight == 0.7)
        assert torch.all(norm.bias == 0.3)
    assert torch.all(network.activation.get_parameter("slope") == 0.25)
    for name, value in network.pau.state_dict().items():
        assert torch.equal(value, pau_before[name])


def test_recurrent_weights_are_initialised_per_gate() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(64, 256)
    initialise(lstm, scheme="xavier_normal", activation=activation("sigmoid"))
    for gate in lstm.get_parameter("weight_ih_l0").detach().split(256):
        # Per gate (256 x 64): fans 64 and 256, not 64 and 1024 of the stacked matrix.
        assert gate.var().item() == pytest.approx(2 / (64 + 256), rel=0.03)  # n = 16,384 per gate
    for bias in ("bias_ih_l0", "bias_hh_l0"):
        assert torch.count_nonzero(lstm.get_parameter(bias)) == 0

    gru = nn.GRU(32, 64, num_layers=2)
    initialise(gru, scheme="orthogonal", activation=activation("tanh"))
    for name in ("weight_hh_l0", "weight_hh_l1"):
        for gate in getattr(gru, name).detach().double().split(64):
            torch.testing.assert_close(
                gate @ gate.T, (5 / 3) ** 2 * torch.eye(64, dtype=torch.float64), atol=1e-5, rtol=0
            )


class CustomCell(nn.Module):
    """An Elman cell written with raw parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_input = nn.Parameter(torch.empty(256, 1024))
        self.weight_recurrent = nn.Parameter(torch.empty(256, 256))
        self.bias = nn.Parameter(torch.ones(256))
        self.scale = nn.Parameter(torch.full((256,), 3.0))


def test_custom_cells_have_their_weight_matrices_initialised() -> None:
    torch.manual_seed(0)
    cell = CustomCell()
    description = initialise(cell, scheme="auto", activation=activation("relu"))
    assert description == "kaiming_normal(relu)"
    assert cell.weight_input.var().item() == pytest.approx(2 / 1024, rel=0.02)  # n = 262,144
    assert cell.weight_recurrent.var().item() == pytest.approx(2 / 256, rel=0.05)  # n = 65,536
    assert torch.count_nonzero(cell.bias) == 0
    assert torch.all(cell.scale == 3.0)


def test_default_leaves_pytorch_initialisation_untouched() -> None:
    torch.manual_seed(0)
    network = Network()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    assert initialise(network, scheme="default", activation=activation("tanh")) == "default (PyTorch)"
    assert resolve_init_scheme("default", activation("relu")) == "default (PyTorch)"
    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.count_nonzero(network.linear.bias) > 0


def test_the_seed_fixes_the_weights() -> None:
    first, _ = initialised_linear("auto", "relu", seed=3)
    again, _ = initialised_linear("auto", "relu", seed=3)
    other, _ = initialised_linear("auto", "relu", seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_unknown_scheme_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown init scheme 'he'; allowed: auto, default, xavier_uniform"):
        initialise(nn.Linear(2, 2), scheme="he", activation=activation("relu"))
