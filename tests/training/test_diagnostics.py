"""Gradient-flow diagnostics: vanishing gradients, dead and saturated units, gradient-norm means."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from app.spec import ExperimentSpec
from worker.training.diagnostics import (
    GradientFlowMonitor,
    GradientNormTracker,
    gradient_flag,
    gradient_norm_ratio,
)
from worker.training.models import ActivationNetwork, DiagnosticLayer, build_model
from worker.training.trainer import train_arm


def make_spec(
    model: dict[str, Any], activation: Any, *, dataset: str = "spirals", training: dict[str, Any] | None = None
) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": dataset},
            "model": model,
            "activations": [activation],
            "seeds": [0],
            "training": {"epochs": 1, **(training or {})},
            "device": "cpu",
        }
    )


def build(spec: ExperimentSpec) -> ActivationNetwork:
    torch.manual_seed(0)
    return build_model(spec, spec.activations[0], input_shape=spec.dataset.input_shape, classes=spec.dataset.classes)


def monitor_for(spec: ExperimentSpec, network: ActivationNetwork, probe: torch.Tensor) -> GradientFlowMonitor:
    return GradientFlowMonitor(network.diagnostic_layers(), activation=spec.activations[0], probe=probe)


def test_deep_sigmoid_mlp_vanishes_while_he_initialised_relu_does_not() -> None:
    deep = {"kind": "mlp", "hidden": [32] * 20}
    sigmoid = train_arm(
        make_spec(deep, "sigmoid", training={"init": "xavier_normal"}), activation_index=0, seed=0
    ).reports[-1]
    relu = train_arm(make_spec(deep, "relu", training={"init": "kaiming_normal"}), activation_index=0, seed=0).reports[
        -1
    ]
    assert sigmoid.gradient_flag == "vanishing"
    assert sigmoid.grad_norm_ratio is not None and sigmoid.grad_norm_ratio < 1e-3
    assert relu.gradient_flag is None
    assert relu.grad_norm_ratio is not None and relu.grad_norm_ratio > 1e-2
    first, last = sigmoid.layers[0], sigmoid.layers[-1]
    assert (first.layer_name, last.layer_name) == ("hidden1", "output")
    assert first.grad_norm is not None and last.grad_norm is not None
    assert sigmoid.grad_norm_ratio == pytest.approx(first.grad_norm / last.grad_norm)


@pytest.mark.parametrize("dead_units", [0, 3, 7])
def test_dead_fraction_counts_exactly_the_units_forced_off(dead_units: int) -> None:
    spec = make_spec({"kind": "mlp", "hidden": [16, 8]}, "relu")
    network = build(spec)
    with torch.no_grad():
        network.linears[0].bias.fill_(100.0)
        network.linears[0].bias[:dead_units] = -1e3
    probe = torch.randn(200, 2)
    reports, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    assert reports[0].dead_fraction == dead_units / 16
    assert reports[0].saturated_fraction is None
    assert reports[-1].dead_fraction is None and reports[-1].activation_mean is None


def test_a_dead_conv_unit_is_a_channel_silent_at_every_position() -> None:
    spec = make_spec({"kind": "cnn", "channels": [8], "pooling": "none"}, "relu", dataset="digits")
    network = build(spec)
    convolution = network.convolutions[0]
    with torch.no_grad():
        convolution.weight.zero_()
        convolution.bias.fill_(1.0)
        convolution.bias[:2] = -1e3
        # Channel 2 fires at a single position of a single probe example: alive.
        convolution.bias[2] = -1.0
        convolution.weight[2, 0, 1, 1] = 1.0
    probe = torch.zeros(50, 1, 8, 8)
    probe[7, 0, 3, 3] = 10.0
    reports, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    assert reports[0].dead_fraction == 2 / 8


def test_saturation_is_detected_in_a_sigmoid_net_with_huge_weights() -> None:
    spec = make_spec({"kind": "mlp", "hidden": [32, 32]}, "sigmoid")
    probe = torch.randn(300, 2)
    network = build(spec)
    calm, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    with torch.no_grad():
        for linear in network.linears:
            linear.weight.mul_(1000.0)
    saturated, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    assert calm[0].saturated_fraction is not None and calm[0].saturated_fraction < 0.2
    assert saturated[0].saturated_fraction is not None and saturated[0].saturated_fraction > 0.9
    assert saturated[0].dead_fraction is None


def test_hardtanh_saturation_is_measured_against_its_own_bounds() -> None:
    spec = make_spec({"kind": "mlp", "hidden": [10]}, {"name": "hardtanh", "params": {"min_val": -3, "max_val": 3}})
    network = build(spec)
    probe = torch.randn(100, 2)
    with torch.no_grad():
        network.linears[0].weight.zero_()
        network.linears[0].bias[:5] = 2.0  # beyond tanh's 0.99 but well inside [-3, 3]
        network.linears[0].bias[5:] = -50.0  # clipped at -3
    reports, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    assert reports[0].saturated_fraction == 0.5


def test_activation_statistics_and_weight_norms_are_reported_per_layer() -> None:
    spec = make_spec({"kind": "mlp", "hidden": [6]}, "tanh")
    network = build(spec)
    probe = torch.randn(64, 2)
    reports, _, _ = monitor_for(spec, network, probe).epoch_layers(network)
    with torch.no_grad():
        outputs = torch.tanh(network.linears[0](probe))
    assert reports[0].activation_mean == pytest.approx(outputs.mean().item(), abs=1e-6)
    assert reports[0].activation_std == pytest.approx(outputs.std(unbiased=False).item(), abs=1e-6)
    assert reports[0].weight_norm == pytest.approx(network.linears[0].weight.norm().item(), rel=1e-6)
    assert [report.layer for report in reports] == [1, 2]


def test_learnable_activation_parameters_are_reported() -> None:
    spec = make_spec({"kind": "mlp", "hidden": [4]}, {"name": "prelu", "params": {"init": 0.2}})
    network = build(spec)
    reports, _, _ = monitor_for(spec, network, torch.randn(8, 2)).epoch_layers(network)
    assert reports[0].activation_parameters == {"slope": pytest.approx(0.2)}
    assert reports[1].activation_parameters is None


def test_gradient_norms_are_averaged_over_the_epoch_steps_and_reset() -> None:
    layer = nn.Linear(2, 2)
    other = nn.Linear(2, 2)

    tracker = GradientNormTracker(
        [DiagnosticLayer("a", (layer.weight,), None, 2), DiagnosticLayer("b", (other.weight, other.bias), None, 2)],
        device=torch.device("cpu"),
    )
    for scale in (1.0, 3.0):
        layer.weight.grad = torch.full((2, 2), scale)  # norm 2 * scale
        other.weight.grad = torch.full((2, 2), scale)
        other.bias.grad = torch.zeros(2)
        tracker.record()
    # Joined weights make one norm; the mean over the two steps is (2 + 6) / 2.
    assert tracker.epoch_means().tolist() == pytest.approx([4.0, 4.0])
    tracker.reset()
    assert tracker.epoch_means().tolist() == [0.0, 0.0]


def test_gradient_flag_thresholds() -> None:
    assert gradient_flag(5e-4) == "vanishing"
    assert gradient_flag(2e3) == "exploding"
    assert gradient_flag(1.0) is None
    assert gradient_flag(None) is None
    assert gradient_norm_ratio([1e-6, 1.0]) == pytest.approx(1e-6)
    assert gradient_norm_ratio([1.0, 0.0]) is None
    assert gradient_norm_ratio([None, 1.0]) is None
