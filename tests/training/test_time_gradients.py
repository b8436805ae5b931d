"""The gradient through time of the Elman cell: per-step norms of dL/dh_t, their summary and the flag over time."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional

from app.gradient_flow import gradient_flag, gradient_norm_ratio, log_slope_back_in_time
from app.spec import ExperimentSpec
from worker.training.diagnostics import GradientFlowMonitor, time_gradient_norms
from worker.training.models import (
    TIME_GRADIENTS_MEASURED,
    TIME_GRADIENTS_NOT_MEASURED_FUSED,
    RecurrentNetwork,
    build_model,
)
from worker.training.stacked import train_stacked
from worker.training.trainer import train_arm


def rnn_spec(activation: str, *, dataset: str = "digits", model: dict[str, Any] | None = None) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": dataset},
            "model": {"kind": "rnn", "cell": "rnn", "hidden_size": 8, **(model or {})},
            "activations": [activation],
            "seeds": [0],
            "training": {"epochs": 1, "batch_size": 256},
            "device": "cpu",
        }
    )


def tiny_elman(activation: str, *, layers: int = 1) -> RecurrentNetwork:
    spec = rnn_spec(activation, model={"hidden_size": 3, "layers": layers})
    torch.manual_seed(0)
    network = build_model(spec, spec.activations[0], input_shape=(2, 5), classes=3)
    assert isinstance(network, RecurrentNetwork)
    return network


def hand_norms(network: RecurrentNetwork, inputs: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """||dL/dh_t|| by backward on the hidden states themselves (retain_grad), unrolled here by hand."""
    sequence = inputs.transpose(1, 2)
    per_layer: list[list[torch.Tensor]] = []
    for layer in network.recurrent_layers:
        states: list[torch.Tensor] = []
        state = torch.zeros(inputs.shape[0], layer.recurrent_weight.weight.shape[0])
        for step in range(sequence.shape[1]):
            pre = layer.input_weight(sequence[:, step])
            state = layer.activation(pre if step == 0 else pre + layer.recurrent_weight(state))
            state.retain_grad()
            states.append(state)
        per_layer.append(states)
        sequence = torch.stack(states, dim=1)
    loss = functional.cross_entropy(network.output(sequence[:, -1]), labels)
    loss.backward()
    return [[float(state.grad.norm()) for state in states] for states in per_layer]  # type: ignore[union-attr]


@pytest.mark.parametrize("layers", [1, 2])
def test_per_step_norms_match_backward_on_the_hidden_states(layers: int) -> None:
    network = tiny_elman("tanh", layers=layers)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(7, 2, 5, generator=generator)
    labels = torch.randint(0, 3, (7,), generator=generator)
    expected = hand_norms(network, inputs, labels)
    network.zero_grad(set_to_none=True)
    # In chunks of 3 examples: the chunks add up to the norm over the whole probe set.
    measured = time_gradient_norms(network, inputs, labels, batch_size=3).tolist()
    assert len(measured) == layers and all(len(steps) == 5 for steps in measured)
    for got, want in zip(measured, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    # The probe leaves the parameters' gradients alone (the next training step starts clean).
    assert all(parameter.grad is None for parameter in network.parameters())


def test_the_monitor_puts_the_norms_on_the_recurrent_layers_and_summarises_the_first() -> None:
    network = tiny_elman("tanh", layers=2)
    inputs = torch.randn(6, 2, 5, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    spec = rnn_spec("tanh")
    monitor = GradientFlowMonitor(
        network.diagnostic_layers(), activation=spec.activations[0], probe=inputs, probe_labels=labels
    )
    reports, _, _ = monitor.epoch_layers(network)
    expected = hand_norms(network, inputs, labels)
    assert [report.layer_name for report in reports] == ["recurrent1", "recurrent2", "output"]
    assert reports[0].time_grad_norms == pytest.approx(expected[0], rel=1e-5)
    assert reports[1].time_grad_norms == pytest.approx(expected[1], rel=1e-5)
    assert reports[2].time_grad_norms is None


def test_summary_fields_follow_the_one_rule() -> None:
    norms = [1e-6, 1e-4, 1e-2, 1.0]
    assert gradient_norm_ratio(norms) == pytest.approx(1e-6)
    assert gradient_flag(gradient_norm_ratio(norms)) == "vanishing"
    # Two decades lost per step going back: the slope is -2 ln 10.
    assert log_slope_back_in_time(norms) == pytest.approx(-2 * math.log(10))
    assert log_slope_back_in_time([5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert gradient_flag(gradient_norm_ratio([2e3, 1.0])) == "exploding"
    assert log_slope_back_in_time([None, 1.0]) is None


def test_sigmoid_over_a_long_sequence_vanishes_through_time_while_a_short_tanh_one_does_not() -> None:
    # mnist1d: 40 steps of one feature; digits: 8 rows of 8 pixels.
    sigmoid = train_arm(rnn_spec("sigmoid", dataset="mnist1d"), activation_index=0, seed=0)
    tanh = train_arm(rnn_spec("tanh"), activation_index=0, seed=0)
    long_report, short_report = sigmoid.reports[-1], tanh.reports[-1]
    assert long_report.time_gradient_flag == "vanishing"
    assert long_report.time_grad_norm_ratio is not None and long_report.time_grad_norm_ratio < 1e-3
    assert long_report.time_grad_log_slope is not None and long_report.time_grad_log_slope < 0
    norms = long_report.layers[0].time_grad_norms
    assert norms is not None and len(norms) == 40
    assert long_report.time_grad_norm_ratio == pytest.approx(norms[0] / norms[-1])
    assert short_report.time_gradient_flag is None
    assert short_report.time_grad_norm_ratio is not None and short_report.time_grad_norm_ratio > 1e-3
    assert short_report.layers[0].time_grad_norms is not None and len(short_report.layers[0].time_grad_norms) == 8
    assert sigmoid.info is not None and sigmoid.info.time_gradients == TIME_GRADIENTS_MEASURED


def test_measuring_through_time_changes_no_training_number() -> None:
    spec = rnn_spec("tanh").model_copy(update={"training": rnn_spec("tanh").training.model_copy(update={"epochs": 2})})
    measured = train_arm(spec, activation_index=0, seed=0)
    original = GradientFlowMonitor.__init__

    def without_labels(self: GradientFlowMonitor, *args: Any, **kwargs: Any) -> None:
        kwargs["probe_labels"] = None
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GradientFlowMonitor, "__init__", without_labels)
        plain = train_arm(spec, activation_index=0, seed=0)
    assert plain.reports[-1].time_grad_norm_ratio is None
    for with_probe, without in zip(measured.reports, plain.reports, strict=True):
        assert (with_probe.train_loss, with_probe.test_loss, with_probe.grad_norm_ratio) == (
            without.train_loss,
            without.test_loss,
            without.grad_norm_ratio,
        )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_cells_say_the_gradient_through_time_is_not_measured(cell: str) -> None:
    spec = rnn_spec("relu", model={"cell": cell, "head_hidden": 8})
    outcome = train_arm(spec, activation_index=0, seed=0)
    assert outcome.info is not None and outcome.info.time_gradients == TIME_GRADIENTS_NOT_MEASURED_FUSED
    assert outcome.info.time_gradients.startswith("not measured")
    report = outcome.reports[-1]
    assert report.time_grad_norm_ratio is None and report.time_gradient_flag is None
    assert all(layer.time_grad_norms is None for layer in report.layers)


def test_mlps_have_no_time_gradients() -> None:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "spirals"},
            "model": {"kind": "mlp", "hidden": [8]},
            "activations": ["relu"],
            "seeds": [0],
            "training": {"epochs": 1},
            "device": "cpu",
        }
    )
    outcome = train_arm(spec, activation_index=0, seed=0)
    assert outcome.info is not None and outcome.info.time_gradients is None
    assert outcome.reports[-1].time_grad_norm_ratio is None


def test_the_stacked_trainer_measures_elman_runs_through_its_fallback() -> None:
    # Recurrent models have no stacked form: train_stacked trains them one by one with train_arm.
    spec = rnn_spec("tanh")
    (stacked,) = train_stacked(spec, members=[(0, 0)])
    plain = train_arm(spec, activation_index=0, seed=0)
    assert stacked.info is not None and stacked.info.training_path == "unstacked"
    assert stacked.reports[-1].layers[0].time_grad_norms == plain.reports[-1].layers[0].time_grad_norms
    assert stacked.reports[-1].time_grad_norm_ratio == plain.reports[-1].time_grad_norm_ratio
