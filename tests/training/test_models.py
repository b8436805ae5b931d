"""Model builders: every kind builds, runs, places the activation where documented and counts parameters right."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import torch
from torch import nn

from app.catalog import MODEL_KINDS
from app.spec import ExperimentSpec
from app.spec_cost import estimate_parameters
from app.spec_models import ModelSpec
from worker.training.activations import ActivationModule
from worker.training.models import build_model


def make_spec(dataset: str, model: dict[str, Any], activations: list[Any] | None = None) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {"dataset": {"name": dataset}, "model": model, "activations": activations or ["relu"], "seeds": [0]}
    )


def build(spec: ExperimentSpec, index: int = 0) -> nn.Module:
    return build_model(
        spec, spec.activations[index], input_shape=spec.dataset.input_shape, classes=spec.dataset.classes
    )


def run_batch(spec: ExperimentSpec, model: nn.Module, batch: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    return model(torch.randn(batch, *spec.dataset.input_shape))


MODEL_VARIANTS = [
    ("spirals", {"kind": "mlp", "hidden": [16, 16]}),
    ("digits", {"kind": "mlp", "hidden": [16, 8, 8], "norm": "batch", "dropout": 0.2}),
    ("mnist1d", {"kind": "mlp", "hidden": [12, 12, 12], "norm": "layer", "residual": True}),
    ("digits", {"kind": "cnn", "channels": [4, 6], "pooling": "max", "norm": "batch"}),
    ("digits", {"kind": "cnn", "channels": [4], "pooling": "avg", "norm": "layer", "hidden": [10], "dropout": 0.1}),
    ("digits", {"kind": "cnn", "channels": [3, 3], "kernel_size": 4, "pooling": "none"}),
    ("mnist1d", {"kind": "cnn", "channels": [4, 8], "kernel_size": 5, "pooling": "max", "norm": "batch"}),
    ("mnist1d", {"kind": "cnn", "channels": [4], "pooling": "avg", "norm": "layer", "hidden": [8, 6]}),
    ("digits", {"kind": "rnn", "cell": "rnn", "hidden_size": 10, "layers": 2}),
    ("mnist1d", {"kind": "rnn", "cell": "rnn", "hidden_size": 6}),
    ("digits", {"kind": "rnn", "cell": "gru", "hidden_size": 10, "head_hidden": 7}),
    ("mnist1d", {"kind": "rnn", "cell": "lstm", "hidden_size": 5, "layers": 2, "head_hidden": 9}),
]


def test_every_catalog_model_kind_has_a_spec_class_and_a_variant_row() -> None:
    # Each row builds its kind and compares the count with the spec's estimate (below), so a kind
    # without a builder in worker.training.models or a count in app.spec_cost fails there.
    (union, _) = typing.get_args(ModelSpec)
    assert [spec_class.model_fields["kind"].default for spec_class in typing.get_args(union)] == list(MODEL_KINDS)
    assert {model["kind"] for _, model in MODEL_VARIANTS} == set(MODEL_KINDS)


@pytest.mark.parametrize(("dataset", "model"), MODEL_VARIANTS)
def test_every_variant_runs_and_its_parameter_count_matches_the_spec_estimate(
    dataset: str, model: dict[str, Any]
) -> None:
    spec = make_spec(dataset, model)
    network = build(spec)
    logits = run_batch(spec, network)
    assert logits.shape == (5, spec.dataset.classes)
    assert torch.isfinite(logits).all()
    assert network.parameter_count() == estimate_parameters(spec)
    assert network.parameter_count() == sum(parameter.numel() for parameter in network.parameters())


@pytest.mark.parametrize(("dataset", "model"), MODEL_VARIANTS)
def test_per_unit_prelu_counts_one_slope_per_unit_as_the_estimate_does(dataset: str, model: dict[str, Any]) -> None:
    spec = make_spec(dataset, model, [{"name": "prelu", "params": {"mode": "unit"}}])
    network = build(spec)
    assert run_batch(spec, network).shape == (5, spec.dataset.classes)
    assert network.parameter_count() == estimate_parameters(spec)


def test_cnn_uses_conv2d_for_images_and_conv1d_for_signals() -> None:
    image_net = build(make_spec("digits", {"kind": "cnn", "channels": [4]}))
    signal_net = build(make_spec("mnist1d", {"kind": "cnn", "channels": [4]}))
    assert any(isinstance(module, nn.Conv2d) for module in image_net.modules())
    assert not any(isinstance(module, nn.Conv1d) for module in image_net.modules())
    assert any(isinstance(module, nn.Conv1d) for module in signal_net.modules())


@pytest.mark.parametrize(
    ("cell", "placement", "names"),
    [
        ("rnn", "recurrence", ["recurrent1", "recurrent2", "output"]),
        ("gru", "head", ["gru1", "gru2", "head", "output"]),
        ("lstm", "head", ["lstm1", "lstm2", "head", "output"]),
    ],
)
def test_recurrent_nets_report_where_the_activation_sits(cell: str, placement: str, names: list[str]) -> None:
    spec = make_spec("digits", {"kind": "rnn", "cell": cell, "hidden_size": 6, "layers": 2, "head_hidden": 5})
    network = build(spec)
    assert network.activation_placement == placement
    layers = network.diagnostic_layers()
    assert [layer.name for layer in layers] == names
    with_activation = [layer.name for layer in layers if layer.activation is not None]
    assert with_activation == (["recurrent1", "recurrent2"] if cell == "rnn" else ["head"])


def test_elman_recurrence_applies_the_activation_once_per_step_and_layer() -> None:
    spec = make_spec("digits", {"kind": "rnn", "cell": "rnn", "hidden_size": 6, "layers": 2}, ["tanh"])
    network = build(spec)
    calls: list[tuple[int, ...]] = []
    for module in network.modules():
        if isinstance(module, ActivationModule):
            module.register_forward_hook(lambda _module, _inputs, output: calls.append(tuple(output.shape)))
    run_batch(spec, network, batch=3)
    # digits: 8 rows read as 8 steps, two stacked layers.
    assert calls == [(3, 6)] * 16


def test_mlp_and_cnn_place_the_activation_in_hidden_layers_with_one_module_per_layer() -> None:
    spec = make_spec("digits", {"kind": "cnn", "channels": [4, 6], "hidden": [10]}, [{"name": "prelu"}])
    network = build(spec)
    assert network.activation_placement == "hidden layers"
    layers = network.diagnostic_layers()
    assert [layer.name for layer in layers] == ["conv1", "conv2", "hidden1", "output"]
    assert layers[-1].activation is None
    modules = [layer.activation for layer in layers[:-1]]
    assert len({id(module) for module in modules}) == 3
    assert all(isinstance(module, ActivationModule) for module in modules)


def test_residual_connections_carry_the_signal_past_a_zeroed_layer() -> None:
    outputs = {}
    for residual in (False, True):
        spec = make_spec("spirals", {"kind": "mlp", "hidden": [8, 8], "residual": residual})
        network = build(spec)
        with torch.no_grad():
            network.linears[1].weight.zero_()
            network.linears[1].bias.zero_()
        outputs[residual] = run_batch(spec, network, batch=6)
    # Without the skip, relu(0) wipes the input out and every example gets the same logits.
    assert torch.allclose(outputs[False], outputs[False][0].expand_as(outputs[False]))
    assert not torch.allclose(outputs[True], outputs[True][0].expand_as(outputs[True]))


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    spec = make_spec("spirals", {"kind": "mlp", "hidden": [32], "dropout": 0.5})
    network = build(spec)
    inputs = torch.randn(4, 2)
    network.train()
    assert not torch.equal(network(inputs), network(inputs))
    network.eval()
    assert torch.equal(network(inputs), network(inputs))
