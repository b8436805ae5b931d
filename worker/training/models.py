"""Model builders: MLP, CNN and RNN with the arm's activation wherever a nonlinearity belongs.

``build_model`` is the one entry point; each catalog model kind maps to one builder function in
``_BUILDERS`` (a guard test checks that every kind has one, and that it builds the parameter count
``app.spec_cost`` estimates).

Every network is an ``ActivationNetwork``: it knows where its activation sits
(``activation_placement``) and lists its layers for the gradient-flow diagnostics
(``diagnostic_layers()``, first to last, output layer included). Each nonlinearity is its
own activation module instance, so per-unit or per-layer learnable parameters are never
shared between layers.

Normalisation: ``batch`` is BatchNorm (1d for features and 1-D signals, 2d for images);
``layer`` is LayerNorm for fully connected layers and GroupNorm with one group for conv
layers, which normalises each example over all channels and positions and keeps one
scale and shift per channel (the conv analogue of layer norm). CNN hidden linear layers
are never normalised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from app.catalog import MODEL_KINDS
from app.spec import ActivationSpec, ExperimentSpec
from app.spec_cost import conv_output_length, pooled_length
from app.spec_models import CnnSpec, MlpSpec, RnnSpec
from worker.training.activations import ActivationModule, build_activation

ActivationFactory = Callable[[int], ActivationModule]

PLACEMENT_HIDDEN = "hidden layers"
PLACEMENT_RECURRENCE = "recurrence"
PLACEMENT_HEAD = "head"

# What the diagnostics say about the gradient through time (RunInfo.time_gradients, runs.time_gradients).
TIME_GRADIENTS_MEASURED = "measured"
TIME_GRADIENTS_NOT_MEASURED_FUSED = (
    "not measured: nn.GRU/nn.LSTM run the whole recurrence inside one fused kernel (cuDNN on a GPU), which keeps "
    "the per-step hidden states from autograd; the depth diagnostics are measured as for any layer"
)


@dataclass(frozen=True)
class DiagnosticLayer:
    """One layer reported by the diagnostics: its weights and the activation applied to its output."""

    name: str
    weights: tuple[torch.Tensor, ...]
    activation: ActivationModule | None
    width: int

    @property
    def weight(self) -> torch.Tensor:
        """The layer's main weight (the input weight of a recurrent layer)."""
        return self.weights[0]


def diagnostic_layer(
    name: str, layer: nn.Module, activation: nn.Module | None, *extra_weights: torch.Tensor
) -> DiagnosticLayer:
    """The DiagnosticLayer of a Linear or Conv layer (plus any extra weights, e.g. recurrent ones)."""
    if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d):
        raise TypeError(f"layer {name} must be Linear or Conv, got {type(layer).__name__}")
    if activation is not None and not isinstance(activation, ActivationModule):
        raise TypeError(f"layer {name} needs an ActivationModule, got {type(activation).__name__}")
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return DiagnosticLayer(name, (layer.weight, *extra_weights), activation, width)


class ActivationNetwork(nn.Module):
    """A classifier whose nonlinearities are the arm's activation."""

    activation_placement: str = PLACEMENT_HIDDEN
    # None: no recurrence; TIME_GRADIENTS_MEASURED where forward_with_states gives every step's hidden state.
    time_gradients: str | None = None

    def forward_with_states(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Logits and each recurrent layer's hidden states h_1..h_T (graph nodes, for dL/dh_t)."""
        raise NotImplementedError(f"{type(self).__name__} has no hidden states of its own to trace")

    def diagnostic_layers(self) -> list[DiagnosticLayer]:
        """Layers with weights, first to last, the output layer (activation None) last."""
        raise NotImplementedError

    def parameter_count(self) -> int:
        """Trainable parameters, activation parameters included."""
        return sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)


def _dropout(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class MultilayerPerceptron(ActivationNetwork):
    """Flatten, then Linear -> norm -> activation -> dropout per hidden layer, then a linear output."""

    def __init__(
        self,
        *,
        in_features: int,
        hidden: Sequence[int],
        classes: int,
        norm: str,
        dropout: float,
        residual: bool,
        make_activation: ActivationFactory,
    ) -> None:
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.activations = nn.ModuleList()
        self.dropouts = nn.ModuleList()
        # A skip connection needs equal widths; it joins consecutive hidden layers only.
        self.skips: list[bool] = []
        features = in_features
        for index, width in enumerate(hidden):
            self.linears.append(nn.Linear(features, width))
            self.norms.append(_feature_norm(norm, width))
            self.activations.append(make_activation(width))
            self.dropouts.append(_dropout(dropout))
            self.skips.append(residual and index > 0 and hidden[index - 1] == width)
            features = width
        self.output = nn.Linear(features, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of inputs of any shape (flattened)."""
        hidden = inputs.flatten(1)
        for linear, norm, activation, dropout, skip in zip(
            self.linears, self.norms, self.activations, self.dropouts, self.skips, strict=True
        ):
            update = dropout(activation(norm(linear(hidden))))
            hidden = hidden + update if skip else update
        return self.output(hidden)

    def diagnostic_layers(self) -> list[DiagnosticLayer]:
        """Hidden layers hidden1..hiddenN, then output."""
        layers = [
            diagnostic_layer(f"hidden{index + 1}", linear, activation)
            for index, (linear, activation) in enumerate(zip(self.linears, self.activations, strict=True))
        ]
        layers.append(diagnostic_layer("output", self.output, None))
        return layers


def _feature_norm(norm: str, width: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(width)
    if norm == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def _channel_norm(norm: str, channels: int, dimensions: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(channels) if dimensions == 1 else nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _pool(pooling: str, dimensions: int) -> nn.Module:
    if pooling == "max":
        return nn.MaxPool1d(2) if dimensions == 1 else nn.MaxPool2d(2)
    if pooling == "avg":
        return nn.AvgPool1d(2) if dimensions == 1 else nn.AvgPool2d(2)
    return nn.Identity()


class ConvolutionalNetwork(ActivationNetwork):
    """Conv blocks (conv -> norm -> activation -> pool -> dropout), then hidden linear layers and the output."""

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        channels: Sequence[int],
        conv_layers: Sequence[tuple[int, int, int | str]],
        pooling: str,
        norm: str,
        dropout: float,
        hidden: Sequence[int],
        classes: int,
        make_activation: ActivationFactory,
    ) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"a cnn needs (channels, length) or (channels, height, width) inputs, got {input_shape}")
        dimensions = len(input_shape) - 1
        convolution = nn.Conv1d if dimensions == 1 else nn.Conv2d
        self.convolutions = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.activations = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.dropouts = nn.ModuleList()
        if len(conv_layers) != len(channels):
            raise ValueError(f"one (kernel, stride, padding) per conv block is needed, got {len(conv_layers)}")
        in_channels = input_shape[0]
        spatial = list(input_shape[1:])
        for index, (width, (kernel, stride, padding)) in enumerate(zip(channels, conv_layers, strict=True)):
            self.convolutions.append(convolution(in_channels, width, kernel, stride=stride, padding=padding))
            self.norms.append(_channel_norm(norm, width, dimensions))
            self.activations.append(make_activation(width))
            self.pools.append(_pool(pooling, dimensions))
            self.dropouts.append(_dropout(dropout))
            in_channels = width
            # The spec's rule (app.spec_cost.conv_output_length) sizes the flattened features.
            spatial = [
                pooled_length(conv_output_length(size, kernel=kernel, stride=stride, padding=padding), pooling)
                for size in spatial
            ]
            if min(spatial) < 1:
                raise ValueError(f"conv block {index + 1} shrinks the input {tuple(input_shape)} below one position")
        features = in_channels * math.prod(spatial)
        self.linears = nn.ModuleList()
        self.hidden_activations = nn.ModuleList()
        self.hidden_dropouts = nn.ModuleList()
        for width in hidden:
            self.linears.append(nn.Linear(features, width))
            self.hidden_activations.append(make_activation(width))
            self.hidden_dropouts.append(_dropout(dropout))
            features = width
        self.output = nn.Linear(features, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of (N, C, L) or (N, C, H, W) inputs."""
        hidden = inputs
        for convolution, norm, activation, pool, dropout in zip(
            self.convolutions, self.norms, self.activations, self.pools, self.dropouts, strict=True
        ):
            hidden = dropout(pool(activation(norm(convolution(hidden)))))
        hidden = hidden.flatten(1)
        for linear, activation, dropout in zip(
            self.linears, self.hidden_activations, self.hidden_dropouts, strict=True
        ):
            hidden = dropout(activation(linear(hidden)))
        return self.output(hidden)

    def diagnostic_layers(self) -> list[DiagnosticLayer]:
        """conv1..convN, hidden1..hiddenM, then output; a conv layer's units are its channels."""
        layers = [
            diagnostic_layer(f"conv{index + 1}", convolution, activation)
            for index, (convolution, activation) in enumerate(zip(self.convolutions, self.activations, strict=True))
        ]
        layers += [
            diagnostic_layer(f"hidden{index + 1}", linear, activation)
            for index, (linear, activation) in enumerate(zip(self.linears, self.hidden_activations, strict=True))
        ]
        layers.append(diagnostic_layer("output", self.output, None))
        return layers


def as_sequence(inputs: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images as H steps of C*W features; (N, C, L) signals as L steps of C features."""
    if inputs.dim() == 4:
        batch, channels, height, width = inputs.shape
        return inputs.permute(0, 2, 1, 3).reshape(batch, height, channels * width)
    if inputs.dim() == 3:
        return inputs.transpose(1, 2)
    raise ValueError(f"a recurrent net needs (N, C, L) or (N, C, H, W) inputs, got shape {tuple(inputs.shape)}")


def sequence_features(input_shape: Sequence[int]) -> int:
    """Features of one sequence step for an example of this shape."""
    if len(input_shape) == 3:
        return input_shape[0] * input_shape[2]
    if len(input_shape) == 2:
        return input_shape[0]
    raise ValueError(f"a recurrent net needs (channels, length) or (channels, height, width) inputs, got {input_shape}")


class RecurrentLayer(nn.Module):
    """An Elman layer h_t = activation(W_ih x_t + W_hh h_{t-1} + b), the activation inside the recurrence."""

    def __init__(self, input_size: int, hidden_size: int, activation: ActivationModule) -> None:
        super().__init__()
        self.input_weight = nn.Linear(input_size, hidden_size)
        self.recurrent_weight = nn.Linear(hidden_size, hidden_size, bias=False)
        self.activation = activation

    def forward(self, sequence: torch.Tensor, trace: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states of every step, (N, T, hidden), from h_0 = 0; ``trace`` receives h_1..h_T as graph nodes."""
        # One matmul for every step's input projection; only W_hh h stays in the loop.
        projected = self.input_weight(sequence)
        state = self.activation(projected[:, 0])
        states = [state]
        for step in range(1, projected.shape[1]):
            state = self.activation(projected[:, step] + self.recurrent_weight(state))
            states.append(state)
        if trace is not None:
            trace.extend(states)
        return torch.stack(states, dim=1)


class RecurrentNetwork(ActivationNetwork):
    """Stacked Elman layers with the activation in the recurrence; a linear output on the last state."""

    activation_placement = PLACEMENT_RECURRENCE
    time_gradients = TIME_GRADIENTS_MEASURED

    def __init__(
        self, *, step_features: int, hidden_size: int, layers: int, classes: int, make_activation: ActivationFactory
    ) -> None:
        super().__init__()
        self.recurrent_layers = nn.ModuleList(
            RecurrentLayer(step_features if index == 0 else hidden_size, hidden_size, make_activation(hidden_size))
            for index in range(layers)
        )
        self.output = nn.Linear(hidden_size, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits from the last step's hidden state of the top layer."""
        sequence = as_sequence(inputs)
        for layer in self.recurrent_layers:
            sequence = layer(sequence)
        return self.output(sequence[:, -1])

    def forward_with_states(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Logits and each recurrent layer's hidden states h_1..h_T, first layer first."""
        sequence = as_sequence(inputs)
        traces: list[list[torch.Tensor]] = []
        for layer in self.recurrent_layers:
            traces.append([])
            sequence = layer(sequence, traces[-1])
        return self.output(sequence[:, -1]), traces

    def diagnostic_layers(self) -> list[DiagnosticLayer]:
        """recurrent1..recurrentN (input and recurrent weights together), then output."""
        layers = []
        for index, layer in enumerate(self.recurrent_layers):
            assert isinstance(layer, RecurrentLayer)
            layers.append(
                diagnostic_layer(
                    f"recurrent{index + 1}", layer.input_weight, layer.activation, layer.recurrent_weight.weight
                )
            )
        layers.append(diagnostic_layer("output", self.output, None))
        return layers


class GatedRecurrentNetwork(ActivationNetwork):
    """nn.GRU or nn.LSTM with their own gates; the activation sits in the head Linear -> activation -> Linear."""

    activation_placement = PLACEMENT_HEAD
    time_gradients = TIME_GRADIENTS_NOT_MEASURED_FUSED

    def __init__(
        self,
        *,
        cell: str,
        step_features: int,
        hidden_size: int,
        layers: int,
        head_hidden: int,
        classes: int,
        make_activation: ActivationFactory,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        recurrent_class = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.cell = cell
        self.bidirectional = bidirectional
        self.recurrent = recurrent_class(
            step_features, hidden_size, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, head_hidden)
        self.head_activation = make_activation(head_hidden)
        self.output = nn.Linear(head_hidden, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits from the head applied to the top layer's last state (of each direction, when bidirectional)."""
        states, final = self.recurrent(as_sequence(inputs))
        if self.bidirectional:
            # The forward direction's last state is at the last step, the reverse direction's at the first:
            # the top layer's final states of both, side by side (2 x hidden features).
            last = final[0] if isinstance(final, tuple) else final
            summary = torch.cat([last[-2], last[-1]], dim=1)
        else:
            summary = states[:, -1]
        return self.output(self.head_activation(self.head(summary)))

    def diagnostic_layers(self) -> list[DiagnosticLayer]:
        """gru1..N or lstm1..N (no activation of ours; a bidirectional layer's norms join both directions), head,
        output."""
        suffixes = ("", "_reverse") if self.bidirectional else ("",)
        layers = [
            DiagnosticLayer(
                f"{self.cell}{index + 1}",
                tuple(
                    getattr(self.recurrent, f"weight_{kind}_l{index}{suffix}")
                    for suffix in suffixes
                    for kind in ("ih", "hh")
                ),
                None,
                self.recurrent.hidden_size,
            )
            for index in range(self.recurrent.num_layers)
        ]
        layers.append(diagnostic_layer("head", self.head, self.head_activation))
        layers.append(diagnostic_layer("output", self.output, None))
        return layers


ModelBuilder = Callable[[Any, tuple[int, ...], int, ActivationFactory], ActivationNetwork]


def _build_mlp(
    model: MlpSpec, shape: tuple[int, ...], classes: int, make_activation: ActivationFactory
) -> ActivationNetwork:
    return MultilayerPerceptron(
        in_features=math.prod(shape),
        hidden=model.hidden,
        classes=classes,
        norm=model.norm,
        dropout=model.dropout,
        residual=model.residual,
        make_activation=make_activation,
    )


def _build_cnn(
    model: CnnSpec, shape: tuple[int, ...], classes: int, make_activation: ActivationFactory
) -> ActivationNetwork:
    return ConvolutionalNetwork(
        input_shape=shape,
        channels=model.channels,
        conv_layers=model.conv_layers(),
        pooling=model.pooling,
        norm=model.norm,
        dropout=model.dropout,
        hidden=model.hidden,
        classes=classes,
        make_activation=make_activation,
    )


def _build_rnn(
    model: RnnSpec, shape: tuple[int, ...], classes: int, make_activation: ActivationFactory
) -> ActivationNetwork:
    step_features = sequence_features(shape)
    if model.cell == "rnn":
        return RecurrentNetwork(
            step_features=step_features,
            hidden_size=model.hidden_size,
            layers=model.layers,
            classes=classes,
            make_activation=make_activation,
        )
    return GatedRecurrentNetwork(
        cell=model.cell,
        step_features=step_features,
        hidden_size=model.hidden_size,
        layers=model.layers,
        head_hidden=model.head_hidden,
        classes=classes,
        make_activation=make_activation,
        bidirectional=model.bidirectional,
    )


# One builder per catalog model kind: (model spec, input shape, classes, activation factory) -> network.
_BUILDERS: dict[str, ModelBuilder] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "rnn": _build_rnn,
}


def build_model(
    spec: ExperimentSpec, activation: ActivationSpec, *, input_shape: Sequence[int], classes: int
) -> ActivationNetwork:
    """The spec's network for inputs of ``input_shape``, one fresh activation module per nonlinearity."""

    def make_activation(width: int) -> ActivationModule:
        return build_activation(activation, width=width)

    builder = _BUILDERS.get(spec.model.kind)
    if builder is None:
        raise ValueError(f"unknown model kind {spec.model.kind!r}; allowed: {', '.join(MODEL_KINDS)}")
    return builder(spec.model, tuple(int(size) for size in input_shape), classes, make_activation)
