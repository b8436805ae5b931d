"""Version-2 model options: per-block conv kernel sizes, strides and padding, and bidirectional GRU/LSTM.

The strided Conv1d net of issue 13 (Conv1d(1,25,5,s2,p1) -> Conv1d(25,25,3,s2,p1) x2 -> Linear(125,10) on
mnist1d) has the lengths 40 -> 19 -> 10 -> 5 and 5,210 parameters; the spec's output-length rule
(``app.spec_cost.conv_output_length``) agrees with torch for every kernel, stride and padding; a spec that
leaves the options out builds, hashes and trains exactly as before; stacked training gives the unstacked numbers.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

from app.spec import ExperimentSpec
from app.spec_cost import cnn_layer_shapes, conv_output_length, estimate_parameters, estimate_run
from tests.training.test_stacked import DEVICE, check_equivalence
from worker.training.datasets import load_dataset
from worker.training.models import ConvolutionalNetwork, GatedRecurrentNetwork, build_model
from worker.training.stacked import member_memory_bytes
from worker.training.trainer import train_arm

STRIDED = {
    "kind": "cnn",
    "channels": [25, 25, 25],
    "kernel_sizes": [5, 3, 3],
    "strides": [2, 2, 2],
    "padding": [1, 1, 1],
    "pooling": "none",
}


def make_spec(dataset: str, model: dict[str, Any], *, version: int = 2, **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "version": version,
            "dataset": {"name": dataset},
            "model": model,
            "activations": ["relu"],
            "seeds": [0],
            "training": {"epochs": 1, "batch_size": 128, **training},
            "device": "cpu",
        }
    )


def build(spec: ExperimentSpec) -> nn.Module:
    return build_model(spec, spec.activations[0], input_shape=spec.dataset.input_shape, classes=spec.dataset.classes)


def test_the_issues_strided_conv1d_net_has_its_lengths_and_5210_parameters() -> None:
    spec = make_spec("mnist1d", STRIDED)
    network = build(spec)
    assert isinstance(network, ConvolutionalNetwork)
    convolutions = [(conv.kernel_size, conv.stride, conv.padding) for conv in network.convolutions]
    assert convolutions == [((5,), (2,), (1,)), ((3,), (2,), (1,)), ((3,), (2,), (1,))]
    assert network.output.in_features == 125
    lengths = []
    hidden = torch.randn(7, 1, 40)
    for convolution in network.convolutions:
        hidden = convolution(hidden)
        lengths.append(hidden.shape[-1])
    assert lengths == [19, 10, 5]
    assert [layer.output_size for layer in cnn_layer_shapes(spec.model, (1, 40))] == [(19,), (10,), (5,)]
    assert network(torch.randn(7, 1, 40)).shape == (7, 10)
    # 1*25*5+25 + 2*(25*25*3+25) + 125*10+10, counted by torch and by the spec alike.
    assert network.parameter_count() == estimate_parameters(spec) == 5210
    assert estimate_run(spec).forward_macs == 19 * 25 * 5 + 10 * 25 * 25 * 3 + 5 * 25 * 25 * 3 + 125 * 10


@pytest.mark.parametrize("dimensions", [1, 2])
def test_the_output_length_rule_agrees_with_torch_for_every_kernel_stride_and_padding(dimensions: int) -> None:
    convolution = nn.Conv1d if dimensions == 1 else nn.Conv2d
    for length, kernel, stride in itertools.product([5, 8, 13], [1, 2, 3, 5], [1, 2, 3]):
        for padding in range(kernel):
            if length + 2 * padding < kernel:
                continue
            layer = convolution(1, 1, kernel, stride=stride, padding=padding)
            shape = layer(torch.zeros(1, 1, *([length] * dimensions))).shape[2:]
            assert tuple(shape) == (conv_output_length(length, kernel=kernel, stride=stride, padding=padding),) * (
                dimensions
            ), (length, kernel, stride, padding)


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("digits", {"kind": "cnn", "channels": [4, 6], "kernel_sizes": [3, 2], "strides": [1, 2], "padding": [1, 0]}),
        ("digits", {"kind": "cnn", "channels": [3], "kernel_sizes": [4], "padding": ["same"], "hidden": [6]}),
        ("mnist1d", {"kind": "cnn", "channels": [4, 4], "strides": [3, 1], "padding": [0, "same"], "pooling": "avg"}),
        ("mnist1d", {"kind": "rnn", "cell": "gru", "hidden_size": 6, "layers": 2, "bidirectional": True}),
        ("digits", {"kind": "rnn", "cell": "lstm", "hidden_size": 5, "head_hidden": 7, "bidirectional": True}),
    ],
)
def test_each_option_builds_runs_and_counts_what_the_spec_estimates(dataset: str, model: dict[str, Any]) -> None:
    spec = make_spec(dataset, model)
    network = build(spec)
    assert network(torch.randn(3, *spec.dataset.input_shape)).shape == (3, spec.dataset.classes)
    assert network.parameter_count() == estimate_parameters(spec)


def test_a_bidirectional_head_reads_both_directions_final_states() -> None:
    spec = make_spec(
        "mnist1d", {"kind": "rnn", "cell": "lstm", "hidden_size": 6, "head_hidden": 5, "bidirectional": True}
    )
    network = build(spec)
    assert isinstance(network, GatedRecurrentNetwork)
    assert network.head.in_features == 12
    assert network.recurrent.weight_ih_l0_reverse.shape == (24, 1)
    inputs = torch.randn(4, 1, 40)
    states, _ = network.recurrent(inputs.transpose(1, 2))
    # The forward direction ends at the last step, the reverse direction at the first.
    summary = torch.cat([states[:, -1, :6], states[:, 0, 6:]], dim=1)
    expected = network.output(network.head_activation(network.head(summary)))
    torch.testing.assert_close(network(inputs), expected)
    # The reverse weights are part of the diagnostics' recurrent layer, and of the stacked memory plan.
    assert len(network.diagnostic_layers()[0].weights) == 4
    one_way = make_spec("mnist1d", {"kind": "rnn", "cell": "lstm", "hidden_size": 6, "head_hidden": 5})
    assert member_memory_bytes(spec) > member_memory_bytes(one_way)


def test_a_spec_without_the_options_is_unchanged() -> None:
    # The hashes main gave these version-1 specs before the options existed.
    cnn = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "mnist1d"},
            "model": {"kind": "cnn", "channels": [4, 6], "kernel_size": 5},
            "activations": ["relu"],
            "seeds": [0],
        }
    )
    lstm = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {"kind": "rnn", "cell": "lstm", "hidden_size": 8},
            "activations": ["relu"],
            "seeds": [0],
        }
    )
    assert cnn.spec_hash() == "790aaf21faaa8f85480ec865de81a90e1778a291beb6d7a64fb4fdb521a731e9"
    assert lstm.spec_hash() == "d78fdb148dcbc6fe0cc432c01d5375e3e4ed4c90da59fa8a50d8a810e7524f5f"
    assert "strides" not in cnn.model_dump()["model"] and "bidirectional" not in lstm.model_dump()["model"]


def test_the_defaults_written_out_train_the_same_numbers_as_a_version_1_spec() -> None:
    model = {"kind": "cnn", "channels": [3, 4], "kernel_size": 5, "pooling": "max"}
    explicit = {**model, "kernel_sizes": [5, 5], "strides": [1, 1], "padding": ["same", "same"]}
    plain = make_spec("digits", model, version=1)
    written = make_spec("digits", explicit)
    assert estimate_parameters(plain) == estimate_parameters(written)
    assert estimate_run(plain) == estimate_run(written)
    assert member_memory_bytes(plain) == member_memory_bytes(written)
    data = load_dataset(plain.dataset)
    first = train_arm(plain, activation_index=0, seed=0, data=data)
    second = train_arm(written, activation_index=0, seed=0, data=data)
    for one, other in zip(first.reports, second.reports, strict=True):
        assert (one.train_loss, one.test_loss, one.test_accuracy) == (
            other.train_loss,
            other.test_loss,
            other.test_accuracy,
        )
        assert [layer.grad_norm for layer in one.layers] == [layer.grad_norm for layer in other.layers]


def test_a_strided_conv_net_trains_stacked_with_the_unstacked_numbers() -> None:
    model = {"kind": "cnn", "channels": [4, 6], "kernel_sizes": [5, 3], "strides": [2, 2], "padding": [1, 0]}
    spec = ExperimentSpec.model_validate(
        {
            "version": 2,
            "dataset": {"name": "mnist1d"},
            "model": {**model, "pooling": "none", "norm": "batch"},
            "activations": ["relu", "tanh"],
            "seeds": [0, 1],
            "training": {"epochs": 2, "batch_size": 256, "optimizer": "sgd", "lr": 0.05},
            "device": DEVICE,
        }
    )
    outcomes = check_equivalence(spec, [(0, 0), (1, 1)])
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in outcomes)
