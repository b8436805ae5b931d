"""Stacked training: arms that share architecture and hyperparameters train as one batched model.

The arms of one experiment differ only in activation and seed, so their models have the same
shapes. Here they become the members of one stacked model: every weight gains a leading member
axis, linear layers run as one batched matmul (``baddbmm``), conv layers as one grouped
convolution (members folded into the channels, ``groups`` = members), norm layers normalise each
member on its own (BatchNorm over each member's own batch, LayerNorm/GroupNorm per member), and
each activation is applied to its member group. Per-step cost is then that of one wide model, which
is what makes a grid cheap where small models are bound by per-step overhead.

What each member keeps exactly as the unstacked trainer (``worker.training.trainer``) gives it:

- its initial weights: each member is built and initialised by ``prepare_arm`` (``torch.manual_seed``
  of its seed right before), then its tensors are copied into the stacked ones;
- its batch order: ``batch_indices`` of its own seed, gathered per member (``X[idx]`` with idx of
  shape (members, batch));
- its loss and gradients: the stacked loss is the sum of the members' mean batch losses, so each
  member's slice of a gradient is that member's own gradient;
- its optimizer state: Adam, AdamW, RMSprop and SGD are elementwise, so one optimizer over the
  stacked tensors updates each member as its own optimizer would; global-norm gradient clipping is
  the one global operation and is done per member here;
- its learnable activation parameters: every member keeps its own activation modules; parameter-free
  (elementwise) activations run once on a whole member group;
- its metrics and diagnostics: losses, accuracies, per-layer gradient and weight norms, activation
  statistics on the probe set, learnable parameter values, all per member.

The results match the unstacked path up to float rounding: batched matmul and grouped convolution sum
in another order than their unstacked kernels, so float32 values differ in the last bits and the
difference grows slowly over steps (tests/training/test_fused.py states the measured tolerance).

A member whose loss is not finite ends as ``diverged`` after that epoch and is removed from the stack
(the others keep their tensors and optimizer state); within the epoch its NaNs stay in its own
slices because nothing mixes members. A member whose ``on_epoch`` answer is False ends as
``cancelled`` the same way.

Models that cannot be stacked exactly train member after member through ``train_arm`` (the fallback):
recurrent models (their nn.GRU/nn.LSTM kernels have no member axis) and dropout (the unstacked
dropout masks come from the global random stream right after each member's initialisation, which a
stacked model cannot reproduce). ``RunInfo.training_path`` records which path ran. ``stacking_recommended``
says where stacking is also faster (bench/RESULTS.md): always on a GPU, for MLPs on a CPU, not for conv
nets on a CPU, where convolutions are bound by memory traffic that stacking does not reduce.

Checkpoints are per member and in ``train_arm``'s format (the member's ordinary model, optimizer and
schedule state), so a stopped stacked run resumes stacked or unstacked, and the other way round.

On CUDA the whole training step (gather, forward, backward, diagnostics, clipping, optimizer step) is
captured in a CUDA graph and replayed for every full batch (the last, smaller batch runs eagerly); the
graph is captured again when the learning rate changes or a member leaves. On CPU, grouped convolutions
run in the channels-last layout, where oneDNN is several times faster than on NCHW. The CUDA path, graph
capture included, passes the equivalence tests on an H100 (``ACTLAB_TEST_DEVICE=cuda pytest
tests/training/test_fused.py``); there the graph made a 25-arm MLP grid 3x faster than eager stacked steps
(bench/RESULTS.md). ``cuda_graphs=False`` turns the capture off.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from app.catalog import PROBE_EXAMPLES
from app.numbers import finite_or_none
from app.spec import CnnSpec, ExperimentSpec, MlpSpec, estimate_parameters
from worker.training.activations import ActivationModule
from worker.training.datasets import DatasetSplits, load_dataset
from worker.training.diagnostics import (
    ActivationStatistics,
    GradientFlag,
    gradient_flag,
    gradient_norm_ratio,
    probe_inputs,
    saturation_rule,
)
from worker.training.models import ActivationNetwork, ConvolutionalNetwork, MultilayerPerceptron
from worker.training.reports import ArmOutcome, ArmStatus, EpochReport, LayerReport, RunInfo
from worker.training.trainer import (
    EVALUATION_BATCH_SIZE,
    ArmState,
    CheckpointClock,
    batch_indices,
    build_optimizer,
    build_scheduler,
    epoch_report,
    load_checkpoint,
    prepare_arm,
    resolve_device,
    save_checkpoint,
    train_arm,
)

Member = tuple[int, int]
"""(activation_index, seed) of one member."""

OnStart = Callable[[int, RunInfo], None]
OnEpoch = Callable[[list[tuple[int, EpochReport]]], list[bool] | bool | None]

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing; the same here, per member.
_CLIP_EPSILON = 1e-6
# Eager steps before a CUDA graph is captured: the first ones create optimizer state and library workspaces.
_GRAPH_WARMUP_STEPS = 3
_FLOAT_BYTES = 4
# Largest MLP (parameters per member) for which stacking is recommended on a CPU; see stacking_recommended.
_CPU_STACKING_MAX_PARAMETERS = 100_000
# Optimizer state tensors per parameter element (Adam/AdamW: two moments; SGD/RMSprop: at most two).
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 2}


def can_stack(spec: ExperimentSpec) -> tuple[bool, str]:
    """Whether the spec's arms can train as one stacked model; the reason when they cannot."""
    model = spec.model
    if isinstance(model, MlpSpec | CnnSpec):
        if model.dropout > 0:
            return False, (
                "model.dropout > 0: the unstacked dropout masks come from each arm's own global random stream, "
                "which a stacked model cannot reproduce; the arms train one after another"
            )
        return True, ""
    return False, f"model kind {model.kind!r} has no stacked form (mlp and cnn do); the arms train one after another"


def stacking_recommended(spec: ExperimentSpec, *, device: str | torch.device) -> tuple[bool, str]:
    """Whether stacking is expected to train this spec's grid faster on this device; the reason either way."""
    stackable, reason = can_stack(spec)
    if not stackable:
        return False, reason
    target = torch.device(device) if isinstance(device, str) and device != "auto" else resolve_device(device)
    if target.type == "cuda":
        return True, "on a GPU a stacked grid fills the device that one small model leaves idle"
    if isinstance(spec.model, CnnSpec):
        # bench/RESULTS.md: 0.45x (CIFAR-shaped) to about 1x (MNIST-1D) the speed of sequential runs.
        return False, (
            "on a CPU convolutions are bound by memory traffic, which stacking does not reduce, and the grouped "
            "layout adds copies: stacked conv grids measured no faster than sequential runs"
        )
    parameters = estimate_parameters(spec)
    if parameters > _CPU_STACKING_MAX_PARAMETERS:
        # bench/RESULTS.md: 0.85x to 1.4x for an MNIST 784-256-256 MLP (269k parameters): compute-bound.
        return False, (
            f"on a CPU an MLP of {parameters:,} parameters is bound by arithmetic, which stacking does not reduce "
            f"(it pays off up to about {_CPU_STACKING_MAX_PARAMETERS:,})"
        )
    # bench/RESULTS.md: about 1.7x for the MNIST-1D 128-128 MLP (23k parameters).
    return True, "on a CPU a small MLP is bound by per-step overhead, which a stacked grid shares among its members"


def member_memory_bytes(spec: ExperimentSpec) -> int:
    """A generous estimate of the device memory one stacked member needs while training."""
    training = spec.training
    parameters = estimate_parameters(spec)
    # Stacked weights and gradients, the member's ordinary template model, and the optimizer state.
    parameter_bytes = parameters * _FLOAT_BYTES * (3 + _OPTIMIZER_STATES[training.optimizer])
    shape = spec.dataset.input_shape
    model = spec.model
    # Per example: the input, then each layer's output kept for backward (pre-norm, post-norm,
    # post-activation and its gradient: about four copies).
    units = math.prod(shape)
    if isinstance(model, MlpSpec):
        units += 4 * sum(model.hidden)
    elif isinstance(model, CnnSpec):
        spatial = list(shape[1:])
        for width in model.channels:
            units += 4 * width * math.prod(spatial)
            if model.pooling != "none":
                spatial = [max(1, size // 2) for size in spatial]
        units += 4 * sum(model.hidden)
    else:
        units += 4 * model.hidden_size * shape[-1] * model.layers
    examples = max(training.batch_size, EVALUATION_BATCH_SIZE)
    # Twice: a captured CUDA graph keeps its own pool next to the eager step's.
    activation_bytes = 2 * examples * units * _FLOAT_BYTES
    return parameter_bytes + activation_bytes


def group_members(spec: ExperimentSpec, members: Sequence[Member], memory_budget_bytes: int) -> list[list[Member]]:
    """Split members into stackable chunks that fit the budget: activation-major, sizes differing by at most one."""
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    ordered = sorted(members, key=lambda member: member[0])
    if not ordered:
        return []
    per_chunk = max(1, memory_budget_bytes // max(member_memory_bytes(spec), 1))
    chunks = math.ceil(len(ordered) / per_chunk)
    base, extra = divmod(len(ordered), chunks)
    result: list[list[Member]] = []
    start = 0
    for index in range(chunks):
        size = base + (1 if index < extra else 0)
        result.append(list(ordered[start : start + size]))
        start += size
    return result


# --- stacked layers ----------------------------------------------------------------------------------------
#
# Two layouts: fully connected layers hold (members, batch, features); conv layers hold
# (batch, members * channels, *spatial) so one grouped convolution covers every member. Every stacked
# parameter and buffer has the member axis first.


def _tensor(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise ValueError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _parameter(module: nn.Module, name: str) -> nn.Parameter:
    value = getattr(module, name)
    if not isinstance(value, nn.Parameter):
        raise ValueError(f"{type(module).__name__}.{name} is not a parameter")
    return value


def _linear(module: nn.Module) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise ValueError(f"expected nn.Linear, got {type(module).__name__}")
    return module


def _stacked_parameter(tensors: Sequence[Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([tensor.detach() for tensor in tensors]).clone())


def _stacked_buffer(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([tensor.detach() for tensor in tensors]).clone()


class StackedLinear(nn.Module):
    """Members' nn.Linear layers: weight (members, out, in), bias (members, out)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = _stacked_parameter([layer.weight for layer in layers])
        self.bias = _stacked_parameter([layer.bias for layer in layers])

    def forward(self, inputs: Tensor, *, shared: bool = False) -> Tensor:
        """(members, batch, in) -> (members, batch, out); a shared (batch, in) input feeds every member."""
        members, out_features, in_features = self.weight.shape
        if shared:
            # One matmul against the members' weights side by side.
            joined = functional.linear(
                inputs, self.weight.reshape(members * out_features, in_features), self.bias.reshape(-1)
            )
            return joined.view(inputs.shape[0], members, out_features).transpose(0, 1)
        return torch.baddbmm(self.bias.unsqueeze(1), inputs, self.weight.transpose(1, 2))


class StackedConvolution(nn.Module):
    """Members' Conv1d/Conv2d layers as one grouped convolution: weight (members, out, in, *kernel)."""

    def __init__(self, layers: Sequence[nn.Conv1d | nn.Conv2d]) -> None:
        super().__init__()
        first = layers[0]
        if first.groups != 1 or first.padding_mode != "zeros":
            raise ValueError("only ungrouped zero-padded convolutions can be stacked")
        self.weight = _stacked_parameter([layer.weight for layer in layers])
        bias = [layer.bias for layer in layers]
        if any(value is None for value in bias):
            raise ValueError("only convolutions with a bias can be stacked")
        self.bias = _stacked_parameter([value for value in bias if value is not None])
        self.dimensions = first.weight.dim() - 2
        self.stride = first.stride
        self.padding = first.padding
        self.dilation = first.dilation

    def forward(self, inputs: Tensor, *, shared: bool = False) -> Tensor:
        """(batch, members * in, *spatial) -> (batch, members * out, *spatial); shared: (batch, in, *spatial)."""
        members, out_channels = self.weight.shape[:2]
        weight = self.weight.reshape(members * out_channels, *self.weight.shape[2:])
        # A shared input is read by every member's filters: an ordinary convolution with all of them.
        groups = 1 if shared else members
        if inputs.device.type == "cpu":
            return self._channels_last(inputs, weight, groups)
        convolution = functional.conv1d if self.dimensions == 1 else functional.conv2d
        return convolution(
            inputs,
            weight,
            self.bias.reshape(-1),
            stride=self.stride,
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,
            groups=groups,
        )

    def _channels_last(self, inputs: Tensor, weight: Tensor, groups: int) -> Tensor:
        # On CPU, oneDNN's grouped convolution is several times slower on NCHW tensors than on channels-last
        # (NHWC) ones (measured 2-5x, forward and backward), and has no channels-last 1-D form: run 1-D
        # convolutions as 2-D ones of height 1.
        if self.dimensions == 1:
            padding: str | tuple[int, ...] = (
                self.padding if isinstance(self.padding, str) else (0, *self.padding)  # type: ignore[arg-type]
            )
            outputs = functional.conv2d(
                inputs.unsqueeze(2).contiguous(memory_format=torch.channels_last),
                weight.unsqueeze(2),
                self.bias.reshape(-1),
                stride=(1, *self.stride),
                padding=padding,  # type: ignore[arg-type]
                dilation=(1, *self.dilation),
                groups=groups,
            )
            return outputs.squeeze(2).contiguous()
        outputs = functional.conv2d(
            inputs.contiguous(memory_format=torch.channels_last),
            weight,
            self.bias.reshape(-1),
            stride=self.stride,
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,
            groups=groups,
        )
        # Back to NCHW: there each member's slice is one contiguous block per example, which elementwise
        # activations and pooling run through fast; on channels-last they take a slow strided path.
        return outputs.contiguous()


class StackedNorm(nn.Module):
    """Members' norm layers (BatchNorm, LayerNorm, GroupNorm or none), each member normalised on its own."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        first = layers[0]
        self.kind = "none"
        self.eps = 0.0
        self.momentum = 0.0
        self.groups = 1
        if isinstance(first, nn.Identity):
            return
        if isinstance(first, nn.modules.batchnorm._BatchNorm):
            if first.momentum is None or not first.affine or not first.track_running_stats:
                raise ValueError("only affine BatchNorm with running statistics and a momentum can be stacked")
            self.kind = "batch"
            self.momentum = float(first.momentum)
            self.register_buffer("running_mean", _stacked_buffer([_tensor(layer, "running_mean") for layer in layers]))
            self.register_buffer("running_var", _stacked_buffer([_tensor(layer, "running_var") for layer in layers]))
        elif isinstance(first, nn.LayerNorm):
            if len(first.normalized_shape) != 1 or not first.elementwise_affine or first.bias is None:
                raise ValueError("only affine LayerNorm over the last dimension can be stacked")
            self.kind = "layer"
        elif isinstance(first, nn.GroupNorm):
            if not first.affine:
                raise ValueError("only affine GroupNorm can be stacked")
            self.kind = "group"
            self.groups = first.num_groups
        else:
            raise ValueError(f"norm layer {type(first).__name__} has no stacked form")
        self.eps = float(first.eps)
        self.weight = _stacked_parameter([_tensor(layer, "weight") for layer in layers])
        self.bias = _stacked_parameter([_tensor(layer, "bias") for layer in layers])

    def forward(self, inputs: Tensor, *, channels_layout: bool) -> Tensor:
        """Normalise (members, batch, features) or, with channels_layout, (batch, members * channels, *spatial)."""
        if self.kind == "none":
            return inputs
        members = self.weight.shape[0]
        if self.kind == "group":
            # GroupNorm(g, C) per member is GroupNorm(members * g, members * C) over the folded channels.
            return functional.group_norm(
                inputs, members * self.groups, self.weight.reshape(-1), self.bias.reshape(-1), self.eps
            )
        if self.kind == "batch":
            # Each (member, feature) pair is one BatchNorm channel over that member's batch.
            folded = inputs if channels_layout else inputs.transpose(0, 1).reshape(inputs.shape[1], -1)
            normalised = functional.batch_norm(
                folded,
                _tensor(self, "running_mean").view(-1),
                _tensor(self, "running_var").view(-1),
                self.weight.reshape(-1),
                self.bias.reshape(-1),
                self.training,
                self.momentum,
                self.eps,
            )
            if channels_layout:
                return normalised
            return normalised.view(inputs.shape[1], members, -1).transpose(0, 1)
        # LayerNorm of each example's features, then each member's own scale and shift.
        normalised = functional.layer_norm(inputs, (inputs.shape[-1],), None, None, self.eps)
        return torch.addcmul(self.bias.unsqueeze(1), normalised, self.weight.unsqueeze(1))


@dataclass(frozen=True)
class _MemberGroup:
    """Consecutive members that share one activation spec."""

    start: int
    end: int
    learnable: bool


class StackedActivation(nn.Module):
    """One activation site of every member: parameter-free activations run once per member group,
    activations with learnable parameters run per member on that member's own module."""

    def __init__(self, modules: Sequence[ActivationModule], activation_indices: Sequence[int]) -> None:
        super().__init__()
        self.member_modules = nn.ModuleList(modules)
        self.activation_indices = list(activation_indices)
        self.groups = self._groups()

    def _groups(self) -> list[_MemberGroup]:
        groups: list[_MemberGroup] = []
        start = 0
        indices = self.activation_indices
        for end in range(1, len(indices) + 1):
            if end == len(indices) or indices[end] != indices[start]:
                learnable = any(True for _ in self.member_modules[start].parameters())
                groups.append(_MemberGroup(start, end, learnable))
                start = end
        return groups

    def member(self, index: int) -> ActivationModule:
        """The activation module of one member (its own learnable parameters live there)."""
        module = self.member_modules[index]
        assert isinstance(module, ActivationModule)
        return module

    def keep_members(self, keep: Sequence[int]) -> None:
        """Drop every member not in ``keep`` (positions in the current order)."""
        self.member_modules = nn.ModuleList(self.member_modules[index] for index in keep)
        self.activation_indices = [self.activation_indices[index] for index in keep]
        self.groups = self._groups()

    def forward(self, inputs: Tensor, *, axis: int) -> Tensor:
        """Apply each member's activation to its slice along ``axis`` (the member axis)."""
        if len(self.groups) == 1 and not self.groups[0].learnable:
            return self.member_modules[0](inputs)
        # One split, not a narrow per slice: split's backward is one concatenation, while each narrow's
        # backward would fill a zero tensor of the full size.
        sizes: list[int] = []
        for group in self.groups:
            sizes.extend([1] * (group.end - group.start) if group.learnable else [group.end - group.start])
        pieces = iter(inputs.split(sizes, dim=axis))
        outputs: list[Tensor] = []
        for group in self.groups:
            if group.learnable:
                # Per member, on the member's own (batch, units, ...) slice: exactly the unstacked call.
                outputs.extend(
                    self.member_modules[index](next(pieces).squeeze(axis)).unsqueeze(axis)
                    for index in range(group.start, group.end)
                )
            else:
                # Elementwise and parameter-free: one call for the whole group.
                outputs.append(self.member_modules[group.start](next(pieces)))
        return torch.cat(outputs, dim=axis)


Recorder = Callable[[int, Tensor, int], None]
"""Called with (activation site, activation output, member axis) during a probe pass."""


@dataclass(frozen=True)
class StackedDiagnosticLayer:
    """One diagnostics layer of the stacked model: stacked weights and the activation site after it."""

    name: str
    weights: tuple[nn.Parameter, ...]
    site: int | None


class StackedNetwork(nn.Module):
    """Base of the stacked models: members, activation sites, diagnostics layers, member removal."""

    sites: nn.ModuleList

    def __init__(self, members: int) -> None:
        super().__init__()
        self.members = members

    def diagnostic_layers(self) -> list[StackedDiagnosticLayer]:
        """The layers the unstacked ``diagnostic_layers()`` lists, in the same order."""
        raise NotImplementedError

    def forward(self, inputs: Tensor, *, shared: bool = False, record: Recorder | None = None) -> Tensor:
        """Logits (members, batch, classes) for per-member inputs (members, batch, ...) or a shared batch."""
        raise NotImplementedError

    def site(self, index: int) -> StackedActivation:
        """One activation site."""
        module = self.sites[index]
        assert isinstance(module, StackedActivation)
        return module

    def stacked_parameters(self) -> list[nn.Parameter]:
        """Parameters with a leading member axis (everything but the members' own activation parameters)."""
        own = {id(parameter) for site in self.sites for parameter in site.parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in own]

    def member_parameters(self, member: int) -> list[nn.Parameter]:
        """The learnable activation parameters of one member."""
        parameters: list[nn.Parameter] = []
        for index in range(len(self.sites)):
            parameters.extend(self.site(index).member(member).parameters())
        return parameters

    def keep_members(self, keep: Sequence[int]) -> None:
        """Keep only these members (positions in the current order), in this order."""
        positions = torch.tensor(list(keep), dtype=torch.long)
        with torch.no_grad():
            for parameter in self.stacked_parameters():
                parameter.data = parameter.data.index_select(0, positions.to(parameter.device))
                parameter.grad = None
            for module in self.modules():
                if isinstance(module, StackedNorm):
                    for name, buffer in list(module.named_buffers(recurse=False)):
                        setattr(module, name, buffer.index_select(0, positions.to(buffer.device)))
        for index in range(len(self.sites)):
            self.site(index).keep_members(keep)
        self.members = len(keep)


def _site_activations(
    models: Sequence[nn.Module], attribute: str, activation_indices: Sequence[int]
) -> list[StackedActivation]:
    sites = []
    for layer in range(len(getattr(models[0], attribute))):
        modules = [getattr(model, attribute)[layer] for model in models]
        sites.append(StackedActivation(modules, activation_indices))
    return sites


def _check_identity(models: Sequence[nn.Module], attribute: str) -> None:
    for model in models:
        for module in getattr(model, attribute):
            if not isinstance(module, nn.Identity):
                raise ValueError(f"{attribute}: only models without dropout can be stacked")


class StackedPerceptron(StackedNetwork):
    """Stacked ``MultilayerPerceptron`` members: batched matmuls in the (members, batch, features) layout."""

    def __init__(self, models: Sequence[MultilayerPerceptron], activation_indices: Sequence[int]) -> None:
        super().__init__(len(models))
        _check_identity(models, "dropouts")
        first = models[0]
        self.linears = nn.ModuleList(
            StackedLinear([_linear(model.linears[index]) for model in models]) for index in range(len(first.linears))
        )
        self.norms = nn.ModuleList(
            StackedNorm([model.norms[index] for model in models]) for index in range(len(first.norms))
        )
        self.sites = nn.ModuleList(_site_activations(models, "activations", activation_indices))
        self.skips = list(first.skips)
        self.output = StackedLinear([_linear(model.output) for model in models])
        self.layer_names = [layer.name for layer in first.diagnostic_layers()]

    def forward(self, inputs: Tensor, *, shared: bool = False, record: Recorder | None = None) -> Tensor:
        """Logits (members, batch, classes)."""
        hidden = inputs.flatten(1) if shared else inputs.flatten(2)
        for index, (linear, norm, skip) in enumerate(zip(self.linears, self.norms, self.skips, strict=True)):
            projected = linear(hidden, shared=shared and index == 0)
            update = self.site(index)(norm(projected, channels_layout=False), axis=0)
            if record is not None:
                record(index, update, 0)
            hidden = hidden + update if skip else update
        if shared and not self.linears:
            return self.output(hidden, shared=True)
        return self.output(hidden)

    def diagnostic_layers(self) -> list[StackedDiagnosticLayer]:
        """hidden1..hiddenN, then output."""
        layers = [
            StackedDiagnosticLayer(self.layer_names[index], (_parameter(linear, "weight"),), index)
            for index, linear in enumerate(self.linears)
        ]
        layers.append(StackedDiagnosticLayer(self.layer_names[-1], (self.output.weight,), None))
        return layers


class StackedConvolutionalNetwork(StackedNetwork):
    """Stacked ``ConvolutionalNetwork`` members: grouped convolutions, then batched matmuls."""

    def __init__(self, models: Sequence[ConvolutionalNetwork], activation_indices: Sequence[int]) -> None:
        super().__init__(len(models))
        _check_identity(models, "dropouts")
        _check_identity(models, "hidden_dropouts")
        first = models[0]
        blocks = len(first.convolutions)
        self.convolutions = nn.ModuleList(
            StackedConvolution([model.convolutions[index] for model in models])  # type: ignore[misc]
            for index in range(blocks)
        )
        self.norms = nn.ModuleList(StackedNorm([model.norms[index] for model in models]) for index in range(blocks))
        # Pooling is per channel and has no parameters: the first member's module serves all.
        self.pools = nn.ModuleList(first.pools)
        self.linears = nn.ModuleList(
            StackedLinear([_linear(model.linears[index]) for model in models]) for index in range(len(first.linears))
        )
        self.sites = nn.ModuleList(
            _site_activations(models, "activations", activation_indices)
            + _site_activations(models, "hidden_activations", activation_indices)
        )
        self.blocks = blocks
        self.output = StackedLinear([_linear(model.output) for model in models])
        self.layer_names = [layer.name for layer in first.diagnostic_layers()]

    def forward(self, inputs: Tensor, *, shared: bool = False, record: Recorder | None = None) -> Tensor:
        """Logits (members, batch, classes)."""
        members = self.members
        if shared:
            hidden = inputs
        else:
            # (members, batch, C, *spatial) -> (batch, members * C, *spatial) for the grouped convolution.
            hidden = inputs.transpose(0, 1).reshape(inputs.shape[1], members * inputs.shape[2], *inputs.shape[3:])
        for index, (convolution, norm, pool) in enumerate(zip(self.convolutions, self.norms, self.pools, strict=True)):
            convolved = norm(convolution(hidden, shared=shared and index == 0), channels_layout=True)
            batch, folded = convolved.shape[:2]
            spatial = convolved.shape[2:]
            per_member = convolved.view(batch, members, folded // members, *spatial)
            activated = self.site(index)(per_member, axis=1)
            if record is not None:
                record(index, activated, 1)
            hidden = pool(activated.reshape(batch, folded, *spatial))
        if self.blocks == 0 and shared:
            flat = hidden.flatten(1).unsqueeze(0).expand(members, -1, -1)
        else:
            batch = hidden.shape[0]
            flat = hidden.reshape(batch, members, -1).transpose(0, 1)
        for index, linear in enumerate(self.linears):
            site = self.blocks + index
            flat = self.site(site)(linear(flat), axis=0)
            if record is not None:
                record(site, flat, 0)
        return self.output(flat)

    def diagnostic_layers(self) -> list[StackedDiagnosticLayer]:
        """conv1..convN, hidden1..hiddenM, then output."""
        weights = [_parameter(convolution, "weight") for convolution in self.convolutions]
        weights += [_parameter(linear, "weight") for linear in self.linears]
        layers = [
            StackedDiagnosticLayer(name, (weight,), index)
            for index, (name, weight) in enumerate(zip(self.layer_names[:-1], weights, strict=True))
        ]
        layers.append(StackedDiagnosticLayer(self.layer_names[-1], (self.output.weight,), None))
        return layers


def build_stacked_model(models: Sequence[ActivationNetwork], activation_indices: Sequence[int]) -> StackedNetwork:
    """Stack ordinary member models (same architecture; members of one activation consecutive) into one."""
    if not models:
        raise ValueError("at least one member model is needed")
    if len(models) != len(activation_indices):
        raise ValueError("one activation index per member model is needed")
    first = models[0]
    if isinstance(first, MultilayerPerceptron):
        return StackedPerceptron(
            [model for model in models if isinstance(model, MultilayerPerceptron)], activation_indices
        )
    if isinstance(first, ConvolutionalNetwork):
        return StackedConvolutionalNetwork(
            [model for model in models if isinstance(model, ConvolutionalNetwork)], activation_indices
        )
    raise ValueError(f"model {type(first).__name__} has no stacked form")


def _member_sources(stacked: StackedNetwork, member: int) -> dict[str, tuple[Tensor, bool]]:
    """The ordinary model's state names mapped to (stacked tensor, sliced): sliced tensors hold every member
    along dimension 0; the others are the member's own activation parameters, shared with its ordinary model."""
    sources: dict[str, tuple[Tensor, bool]] = {}
    for name, tensor in list(stacked.named_parameters()) + list(stacked.named_buffers()):
        parts = name.split(".")
        if parts[0] != "sites":
            sources[name] = (tensor, True)
            continue
        # sites.<site>.member_modules.<member>.<parameter>: only this member's own module.
        if int(parts[3]) != member:
            continue
        site = int(parts[1])
        rest = ".".join(parts[4:])
        if isinstance(stacked, StackedConvolutionalNetwork) and site >= stacked.blocks:
            sources[f"hidden_activations.{site - stacked.blocks}.{rest}"] = (tensor, False)
        else:
            sources[f"activations.{site}.{rest}"] = (tensor, False)
    return sources


def copy_member_into(stacked: StackedNetwork, member: int, model: ActivationNetwork) -> None:
    """Write one member's current tensors back into an ordinary model of the same architecture."""
    targets = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, (tensor, sliced) in _member_sources(stacked, member).items():
            target = targets[name]
            source = tensor[member] if sliced else tensor
            if source is not target:
                target.copy_(source)


# --- training ----------------------------------------------------------------------------------------------


@dataclass
class _Member:
    """One member: where it sits in the caller's list, and its ordinary template (model, optimizer, progress)."""

    position: int
    state: ArmState
    info: RunInfo
    checkpoint_path: Path | None = None
    status: ArmStatus | None = None

    @property
    def activation_index(self) -> int:
        return self.state.activation_index

    @property
    def seed(self) -> int:
        return self.state.seed


def _batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


class _StackedRun:
    """The stacked model, optimizer, schedule and per-member accumulators of members at the same epoch."""

    def __init__(
        self,
        spec: ExperimentSpec,
        members: list[_Member],
        data: DatasetSplits,
        device: torch.device,
        *,
        cuda_graphs: bool,
    ) -> None:
        self.spec = spec
        self.members = members
        self.data = data
        self.device = device
        self.model = build_stacked_model(
            [member.state.model for member in members], [member.activation_index for member in members]
        ).to(device)
        self.model.train()
        self.layers = self.model.diagnostic_layers()
        self.use_graphs = cuda_graphs and device.type == "cuda"
        self.optimizer = build_optimizer(self.model.parameters(), spec.training)
        if self.use_graphs:
            # A captured optimizer step must keep its step counters on the device.
            for group in self.optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = True
        self.scheduler = build_scheduler(self.optimizer, spec.training)
        self._import_training_state()
        # BatchNorm's batch counter is not kept per step in the stack; the templates get it back on export.
        self.batch_norm_base = [
            [int(_tensor(layer, "num_batches_tracked")) for layer in _batch_norm_layers(member.state.model)]
            for member in members
        ]
        self.total_steps = 0
        self.probe = probe_inputs(data.train_x)
        self.side_stream: Any = None
        self.graph: Any = None
        self.graph_lr: float | None = None
        self.graph_indices: Tensor | None = None
        self.eager_steps = 0
        self._allocate_accumulators()

    # Accumulators live on the device and are updated in place (a CUDA graph writes into them).
    def _allocate_accumulators(self) -> None:
        count = self.model.members
        self.loss_sums = torch.zeros(count, device=self.device)
        self.correct = torch.zeros(count, device=self.device, dtype=torch.long)
        self.gradient_sums = torch.zeros(len(self.layers), count, device=self.device)
        self.steps = 0
        # Which member each own activation parameter belongs to, made here because a captured step
        # cannot copy from the host.
        self.own_parameters = [
            parameter for member in range(count) for parameter in self.model.member_parameters(member)
        ]
        owners = [member for member in range(count) for _ in self.model.member_parameters(member)]
        self.own_owners = torch.tensor(owners, dtype=torch.long, device=self.device)

    # --- optimizer state between the templates (checkpoints) and the stack ---

    def _import_training_state(self) -> None:
        """Take over the members' optimizer and schedule state (non-empty after a resumed checkpoint)."""
        first = self.members[0].state
        if first.scheduler is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(first.scheduler.state_dict())
        for key in ("lr", "initial_lr"):
            if key in first.optimizer.param_groups[0]:
                for group in self.optimizer.param_groups:
                    group[key] = first.optimizer.param_groups[0][key]
        capturable = bool(self.optimizer.param_groups[0].get("capturable", False))
        states = []
        for index, member in enumerate(self.members):
            template = dict(member.state.model.named_parameters())
            states.append((index, member.state.optimizer.state, template))
        for name, (tensor, sliced) in _member_sources(self.model, 0).items():
            if not isinstance(tensor, nn.Parameter):
                continue
            if not sliced:
                continue
            per_member = [optimizer_state.get(template[name]) for _, optimizer_state, template in states]
            if any(state is None for state in per_member):
                continue
            merged: dict[str, Any] = {}
            for key, value in per_member[0].items():  # type: ignore[union-attr]
                if isinstance(value, Tensor) and value.dim() > 0:
                    merged[key] = torch.stack([state[key] for state in per_member]).to(self.device)  # type: ignore[index]
                else:
                    merged[key] = value.clone() if isinstance(value, Tensor) else value
            self.optimizer.state[tensor] = merged
        # Own activation parameters are the templates' own objects: their state carries over as it is.
        for member in self.members:
            for parameter in member.state.model.parameters():
                state = member.state.optimizer.state.get(parameter)
                if state is not None and any(parameter is own for own in self.model.parameters()):
                    self.optimizer.state[parameter] = dict(state)
        for state in self.optimizer.state.values():
            step = state.get("step")
            if capturable and isinstance(step, Tensor):
                state["step"] = step.to(device=self.device, dtype=torch.float32)

    def export_member(self, index: int) -> None:
        """Write one member's tensors, optimizer and schedule state into its template, e.g. for a checkpoint."""
        member = self.members[index]
        template = member.state
        copy_member_into(self.model, index, template.model)
        for layer, base in zip(_batch_norm_layers(template.model), self.batch_norm_base[index], strict=True):
            _tensor(layer, "num_batches_tracked").fill_(base + self.total_steps)
        parameters = dict(template.model.named_parameters())
        optimizer_state = template.optimizer.state
        for name, (tensor, sliced) in _member_sources(self.model, index).items():
            stacked_state = self.optimizer.state.get(tensor)
            if name not in parameters or stacked_state is None:
                continue
            if not sliced:
                optimizer_state[parameters[name]] = dict(stacked_state)
                continue
            optimizer_state[parameters[name]] = {
                key: (
                    value[index].clone()
                    if isinstance(value, Tensor) and value.dim() > 0
                    else value.clone()
                    if isinstance(value, Tensor)
                    else value
                )
                for key, value in stacked_state.items()
            }
        group = self.optimizer.param_groups[0]
        for key in ("lr", "initial_lr"):
            if key in group:
                template.optimizer.param_groups[0][key] = group[key]
        if template.scheduler is not None and self.scheduler is not None:
            template.scheduler.load_state_dict(self.scheduler.state_dict())

    # --- one training step ---

    def _record_gradient_norms(self) -> None:
        """Each member's weight-gradient norm per diagnostics layer, added to the epoch sums (before clipping)."""
        norms = []
        for layer in self.layers:
            squares = [
                torch.linalg.vector_norm(weight.grad.flatten(1), dim=1).square()
                if weight.grad is not None
                else torch.zeros(self.model.members, device=self.device)
                for weight in layer.weights
            ]
            norms.append(torch.stack(squares).sum(dim=0).sqrt())
        self.gradient_sums += torch.stack(norms)

    def _clip_per_member(self, limit: float) -> None:
        """Global-norm clipping as clip_grad_norm_ does it, with one global norm per member."""
        stacked = [parameter for parameter in self.model.stacked_parameters() if parameter.grad is not None]
        squares = torch.zeros(self.model.members, device=self.device)
        for parameter in stacked:
            assert parameter.grad is not None
            squares += torch.linalg.vector_norm(parameter.grad.flatten(1), dim=1).square()
        own = [
            parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            for parameter in self.own_parameters
        ]
        if own:
            squares.index_add_(0, self.own_owners, torch.stack(torch._foreach_norm(own)).square())
        coefficients = (limit / (squares.sqrt() + _CLIP_EPSILON)).clamp(max=1.0)
        for parameter in stacked:
            assert parameter.grad is not None
            parameter.grad.mul_(coefficients.view(-1, *([1] * (parameter.dim() - 1))))
        if own:
            for parameter, coefficient in zip(self.own_parameters, coefficients[self.own_owners].unbind(), strict=True):
                if parameter.grad is not None:
                    parameter.grad.mul_(coefficient)

    def _step(self, indices: Tensor) -> None:
        """One training step of every member on its own batch; indices (members, batch)."""
        batch = indices.shape[1]
        inputs = self.data.train_x[indices]
        labels = self.data.train_y[indices]
        logits = self.model(inputs)
        members, _, classes = logits.shape
        losses = functional.cross_entropy(logits.reshape(-1, classes), labels.reshape(-1), reduction="none")
        member_losses = losses.view(members, batch).mean(dim=1)
        # The sum's gradient in each member's slices is that member's own mean-loss gradient.
        member_losses.sum().backward()
        self._record_gradient_norms()
        clip = self.spec.training.grad_clip
        if clip is not None:
            self._clip_per_member(clip)
        self.optimizer.step()
        self.loss_sums += member_losses.detach() * batch
        self.correct += (logits.detach().argmax(dim=2) == labels).sum(dim=1)

    def _eager_step(self, indices: Tensor) -> None:
        # After a capture the gradients live in the graph's memory: zero them there instead of dropping them.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        if not self.use_graphs:
            self._step(indices)
            return
        with warnings.catch_warnings():
            # Capturable optimizers warn when they step outside a graph; warm-up and last batches do so on purpose.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            self._step(indices)

    def _graph_step(self, indices: Tensor, full_batch: int) -> None:
        """Replay the captured step for full batches; warm up, capture, or run eagerly otherwise."""
        if indices.shape[1] != full_batch:
            self._eager_step(indices)
            return
        if self.graph is None:
            if self.eager_steps < _GRAPH_WARMUP_STEPS:
                # Warm-up steps are real steps, run on a side stream as graph capture requires.
                if self.side_stream is None:
                    self.side_stream = torch.cuda.Stream(device=self.device)
                self.side_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.side_stream):
                    self._eager_step(indices)
                torch.cuda.current_stream(self.device).wait_stream(self.side_stream)
                self.eager_steps += 1
                return
            self.graph_indices = indices.clone()
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step(self.graph_indices)
            self.graph = graph
            self.graph_lr = float(self.optimizer.param_groups[0]["lr"])
            # Capturing records the step without running it: replay it for this batch.
            graph.replay()
            return
        assert self.graph_indices is not None
        self.graph_indices.copy_(indices)
        self.graph.replay()

    def _invalidate_graph(self) -> None:
        self.graph = None
        self.graph_indices = None
        self.eager_steps = 0

    def train_epoch(self, epoch: int) -> Tensor:
        """One pass of every member over its own batch order; [mean loss, accuracy] per member (members, 2)."""
        self.model.train()
        self.loss_sums.zero_()
        self.correct.zero_()
        size = self.data.train_x.shape[0]
        batch_size = self.spec.training.batch_size
        orders: dict[int, tuple[Tensor, list[int]]] = {}
        for member in self.members:
            if member.seed not in orders:
                batches = batch_indices(
                    seed=member.seed, epoch=epoch, size=size, batch_size=batch_size, device=self.device
                )
                orders[member.seed] = (torch.cat(batches), [len(batch) for batch in batches])
        sizes = orders[self.members[0].seed][1]
        # Every member's batches have the same sizes (same data size and batch size), so step s is one
        # column block of the (members, examples) order matrix.
        order = torch.stack([orders[member.seed][0] for member in self.members])
        if self.use_graphs and self.graph is not None and self.graph_lr != self.optimizer.param_groups[0]["lr"]:
            # The learning rate is a constant inside the captured optimizer step.
            self._invalidate_graph()
        start = 0
        for batch in sizes:
            indices = order[:, start : start + batch]
            start += batch
            if self.use_graphs:
                self._graph_step(indices, batch_size)
            else:
                self._eager_step(indices)
            self.steps += 1
            self.total_steps += 1
        examples = max(size, 1)
        return torch.stack([self.loss_sums / examples, self.correct.to(self.loss_sums.dtype) / examples], dim=1)

    # --- evaluation and diagnostics ---

    def evaluate(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """[mean cross-entropy, accuracy] per member (members, 2) over a full split, in eval mode."""
        self.model.eval()
        members = self.model.members
        loss_sums = torch.zeros(members, device=self.device, dtype=torch.float64)
        correct = torch.zeros(members, device=self.device, dtype=torch.long)
        with torch.no_grad():
            for start in range(0, inputs.shape[0], EVALUATION_BATCH_SIZE):
                batch_inputs = inputs[start : start + EVALUATION_BATCH_SIZE]
                batch_labels = labels[start : start + EVALUATION_BATCH_SIZE]
                logits = self.model(batch_inputs, shared=True)
                classes = logits.shape[2]
                losses = functional.cross_entropy(
                    logits.reshape(-1, classes), batch_labels.repeat(members), reduction="none"
                )
                loss_sums += losses.view(members, -1).sum(dim=1).double()
                correct += (logits.argmax(dim=2) == batch_labels).sum(dim=1)
        self.model.train()
        examples = max(inputs.shape[0], 1)
        return torch.stack([loss_sums / examples, correct.double() / examples], dim=1)

    def diagnose(self) -> list[tuple[list[LayerReport], float | None, GradientFlag | None]]:
        """Every member's layer reports, gradient-norm ratio and flag for this epoch; resets the gradient sums."""
        members = self.model.members
        collectors: dict[tuple[int, int], ActivationStatistics] = {}
        for layer in self.layers:
            if layer.site is None:
                continue
            site = self.model.site(layer.site)
            for member in range(members):
                module = site.member(member)
                collectors[(layer.site, member)] = ActivationStatistics(
                    can_die=bool(getattr(module, "can_die", False)),
                    rule=saturation_rule(module, self.members[member].state.activation),
                )

        def record(site: int, outputs: Tensor, axis: int) -> None:
            for member, piece in enumerate(outputs.unbind(axis)):
                collectors[(site, member)].add(piece)

        self.model.eval()
        with torch.no_grad():
            for start in range(0, self.probe.shape[0], PROBE_EXAMPLES):
                self.model(self.probe[start : start + PROBE_EXAMPLES], shared=True, record=record)
        self.model.train()
        nan = torch.full((4,), math.nan, dtype=torch.float64, device=self.device)
        rows = []
        with torch.no_grad():
            for layer in self.layers:
                weight_norms = torch.stack(
                    [torch.linalg.vector_norm(weight.detach().double().flatten(1), dim=1) for weight in layer.weights]
                )
                weight_norm = torch.linalg.vector_norm(weight_norms, dim=0)
                summaries = torch.stack(
                    [
                        collectors[(layer.site, member)].summary().to(self.device) if layer.site is not None else nan
                        for member in range(members)
                    ]
                )
                rows.append(torch.cat([weight_norm.unsqueeze(1), summaries], dim=1))
        gradient_means = (self.gradient_sums / max(self.steps, 1)).double()
        # (layers, members, 6) read in one host transfer.
        table = torch.cat([torch.stack(rows), gradient_means.unsqueeze(2)], dim=2).tolist()
        self.gradient_sums.zero_()
        self.steps = 0
        results = []
        for member in range(members):
            reports: list[LayerReport] = []
            for index, layer in enumerate(self.layers):
                weight_norm, mean, std, dead, saturated, grad_norm = table[index][member]
                collected = collectors.get((layer.site, member)) if layer.site is not None else None
                owner = self.model.site(layer.site).member(member) if layer.site is not None else None
                reports.append(
                    LayerReport(
                        layer=index + 1,
                        layer_name=layer.name,
                        grad_norm=finite_or_none(grad_norm),
                        weight_norm=finite_or_none(weight_norm),
                        activation_mean=finite_or_none(mean),
                        activation_std=finite_or_none(std),
                        dead_fraction=finite_or_none(dead) if collected is not None and collected.can_die else None,
                        saturated_fraction=(
                            finite_or_none(saturated) if collected is not None and collected.rule is not None else None
                        ),
                        activation_parameters=owner.parameter_values() if owner is not None else None,
                    )
                )
            ratio = gradient_norm_ratio([report.grad_norm for report in reports])
            results.append((reports, ratio, gradient_flag(ratio)))
        return results

    # --- membership ---

    def keep_members(self, keep: list[int]) -> None:
        """Remove every member not in ``keep`` (positions in the current stack) with its optimizer state."""
        removed = [index for index in range(len(self.members)) if index not in keep]
        dropped = {id(parameter) for index in removed for parameter in self.model.member_parameters(index)}
        stacked = self.model.stacked_parameters()
        positions = torch.tensor(keep, dtype=torch.long, device=self.device)
        saved_state = {id(parameter): self.optimizer.state.pop(parameter, None) for parameter in stacked}
        for group in self.optimizer.param_groups:
            group["params"] = [parameter for parameter in group["params"] if id(parameter) not in dropped]
        for parameter in list(self.optimizer.state):
            if id(parameter) in dropped:
                del self.optimizer.state[parameter]
        self.model.keep_members(keep)
        for parameter in stacked:
            state = saved_state[id(parameter)]
            if state is None:
                continue
            for key, value in state.items():
                # Moments have the parameter's shape; step counters are scalars shared by every member.
                if isinstance(value, Tensor) and value.dim() > 0:
                    state[key] = value.index_select(0, positions)
            self.optimizer.state[parameter] = state
        self.members = [self.members[index] for index in keep]
        self.batch_norm_base = [self.batch_norm_base[index] for index in keep]
        self.layers = self.model.diagnostic_layers()
        self._allocate_accumulators()
        self._invalidate_graph()


def _check_members(spec: ExperimentSpec, members: Sequence[Member]) -> list[Member]:
    checked: list[Member] = []
    for position, (activation_index, seed) in enumerate(members):
        if not 0 <= activation_index < len(spec.activations):
            raise ValueError(
                f"members[{position}]: activation_index must be in 0..{len(spec.activations) - 1}, "
                f"got {activation_index}"
            )
        if seed < 0:
            raise ValueError(f"members[{position}]: seed must be at least 0, got {seed}")
        checked.append((int(activation_index), int(seed)))
    if len(set(checked)) != len(checked):
        raise ValueError("members: each (activation_index, seed) pair may appear only once")
    return checked


def _keep_going(answer: list[bool] | bool | None, count: int) -> list[bool]:
    if answer is None:
        return [True] * count
    if isinstance(answer, bool):
        return [answer] * count
    if len(answer) != count:
        raise ValueError(f"on_epoch returned {len(answer)} answers for {count} members")
    return [item is not False for item in answer]


def _train_unstacked(
    spec: ExperimentSpec,
    members: list[Member],
    *,
    device: torch.device,
    data: DatasetSplits,
    on_start: OnStart | None,
    on_epoch: OnEpoch | None,
    checkpoint_paths: list[Path | None],
    checkpoint_interval: float,
) -> list[ArmOutcome]:
    outcomes = []
    for position, (activation_index, seed) in enumerate(members):

        def started(info: RunInfo, position: int = position) -> None:
            if on_start is not None:
                on_start(position, info)

        def finished(report: EpochReport, position: int = position) -> bool | None:
            if on_epoch is None:
                return None
            return _keep_going(on_epoch([(position, report)]), 1)[0]

        outcomes.append(
            train_arm(
                spec,
                activation_index=activation_index,
                seed=seed,
                device=device,
                data=data,
                on_start=started,
                on_epoch=finished,
                checkpoint_path=checkpoint_paths[position],
                checkpoint_interval=checkpoint_interval,
            )
        )
    return outcomes


def _outcome(member: _Member, status: ArmStatus) -> ArmOutcome:
    state = member.state
    return ArmOutcome(
        status=status,
        epochs_completed=state.epochs_completed,
        diverged_epoch=state.diverged_epoch,
        info=member.info,
        training_seconds=state.training_seconds,
        reports=list(state.reports),
    )


def _train_group(
    spec: ExperimentSpec,
    members: list[_Member],
    *,
    data: DatasetSplits,
    device: torch.device,
    on_epoch: OnEpoch | None,
    cuda_graphs: bool,
    checkpoints: CheckpointClock,
) -> None:
    """Train members that have completed the same epochs as one stack; sets each member's status."""
    run = _StackedRun(spec, members, data, device, cuda_graphs=cuda_graphs)
    epochs = spec.training.epochs
    has_validation = data.val_x is not None and data.val_y is not None and data.val_x.shape[0] > 0
    for epoch in range(members[0].state.epochs_completed + 1, epochs + 1):
        started = time.perf_counter()
        lr = float(run.optimizer.param_groups[0]["lr"])
        train_values = run.train_epoch(epoch)
        # Read here so the time below is the training time, as in the unstacked path.
        train_table = train_values.tolist()
        train_seconds = time.perf_counter() - started
        evaluations = [run.evaluate(data.test_x, data.test_y)]
        if has_validation:
            assert data.val_x is not None and data.val_y is not None
            evaluations.append(run.evaluate(data.val_x, data.val_y))
        evaluation_table = torch.cat(evaluations, dim=1).tolist()
        diagnostics = run.diagnose()
        if run.scheduler is not None:
            run.scheduler.step()
        epoch_seconds = time.perf_counter() - started
        reports: list[EpochReport] = []
        for index, member in enumerate(run.members):
            layers, ratio, flag = diagnostics[index]
            report = epoch_report(
                epoch=epoch,
                train=(train_table[index][0], train_table[index][1]),
                evaluation=list(evaluation_table[index]),
                # The stack's wall time: every member trained for all of it.
                epoch_seconds=epoch_seconds,
                samples_per_second=data.train_x.shape[0] / train_seconds if train_seconds > 0 else 0.0,
                lr=lr,
                layers=layers,
                ratio=ratio,
                flag=flag,
            )
            reports.append(report)
            member.state.reports.append(report)
            member.state.epochs_completed = epoch
            member.state.training_seconds += epoch_seconds
            if report.diverged:
                member.status = "diverged"
                member.state.diverged_epoch = epoch
            elif epoch == epochs:
                member.status = "succeeded"
        answers = [True] * len(run.members)
        if on_epoch is not None:
            by_position = sorted(range(len(run.members)), key=lambda index: run.members[index].position)
            answered = _keep_going(
                on_epoch([(run.members[index].position, reports[index]) for index in by_position]), len(by_position)
            )
            for index, answer in zip(by_position, answered, strict=True):
                answers[index] = answer
        # As train_arm: when due, and always for a member cancelled before its end (a later attempt may resume
        # it; its checkpoint stays "running"). A member's end is recorded by on_epoch, so it is saved only when due.
        due = checkpoints.due()
        exported: set[int] = set()
        for index, member in enumerate(run.members):
            cancelled = member.status is None and not answers[index]
            if member.checkpoint_path is not None and (due or cancelled):
                run.export_member(index)
                exported.add(index)
                save_checkpoint(member.checkpoint_path, member.state, status=member.status or "running")
            if cancelled:
                member.status = "cancelled"
        if due:
            checkpoints.saved()
        keep = [index for index, member in enumerate(run.members) if member.status is None]
        if len(keep) < len(run.members):
            # The leaving members' final tensors go back to their templates before the stack shrinks.
            for index, member in enumerate(run.members):
                if member.status is not None and index not in exported:
                    run.export_member(index)
            if not keep:
                return
            run.keep_members(keep)
    for index, member in enumerate(run.members):
        run.export_member(index)
        member.status = member.status or "succeeded"


def train_stacked(
    spec: ExperimentSpec,
    *,
    members: Sequence[Member] | None = None,
    device: str | torch.device | None = None,
    data: DatasetSplits | None = None,
    on_start: OnStart | None = None,
    on_epoch: OnEpoch | None = None,
    checkpoint_paths: Sequence[Path | None] | None = None,
    checkpoint_interval: float = 0.0,
    cuda_graphs: bool = True,
) -> list[ArmOutcome]:
    """Train members (activation_index, seed) as one stacked model, or one after another where ``can_stack`` says no.

    ``on_start(member, info)`` runs once per member before training (``member`` is the position in
    ``members``); ``on_epoch`` runs once per epoch with every live member's (member, report) and may return
    False (all) or a list of booleans (one per report) to cancel members. ``checkpoint_paths`` (one per
    member, or None) are read and written in ``train_arm``'s format, so a run resumes stacked or unstacked
    alike; they are written as ``train_arm`` writes them, at most every ``checkpoint_interval`` seconds (0:
    every epoch) and always for a member that is cancelled. Outcomes come back in ``members`` order;
    ``members`` defaults to every arm of the spec.
    """
    chosen = _check_members(
        spec, members if members is not None else [(arm.activation_index, arm.seed) for arm in spec.arms()]
    )
    paths: list[Path | None] = list(checkpoint_paths) if checkpoint_paths is not None else [None] * len(chosen)
    if len(paths) != len(chosen):
        raise ValueError(f"checkpoint_paths: one per member ({len(chosen)}) is needed, got {len(paths)}")
    if not chosen:
        return []
    target = resolve_device(device if device is not None else spec.device)
    if data is None:
        data = load_dataset(spec.dataset, validation_fraction=spec.training.validation_fraction, device=target)
    else:
        data = data.to(target)
    if not can_stack(spec)[0]:
        return _train_unstacked(
            spec,
            chosen,
            device=target,
            data=data,
            on_start=on_start,
            on_epoch=on_epoch,
            checkpoint_paths=paths,
            checkpoint_interval=checkpoint_interval,
        )
    # Members of one activation sit next to each other so parameter-free activations run once per group.
    order = sorted(range(len(chosen)), key=lambda position: (chosen[position][0], position))
    run_members: list[_Member] = []
    for position in order:
        activation_index, seed = chosen[position]
        state = prepare_arm(spec, activation_index=activation_index, seed=seed, data=data, device=target)
        member = _Member(position, state, dataclasses.replace(state.info, training_path="stacked"), paths[position])
        path = paths[position]
        if path is not None and path.exists():
            saved = load_checkpoint(path, state)
            if saved in ("succeeded", "diverged"):
                member.status = "succeeded" if saved == "succeeded" else "diverged"
        run_members.append(member)
    for member in sorted(run_members, key=lambda member: member.position):
        if on_start is not None:
            on_start(member.position, member.info)
    # Members resumed at different epochs cannot share a stack: one stack per starting epoch.
    starting: dict[int, list[_Member]] = {}
    for member in run_members:
        if member.status is None:
            starting.setdefault(member.state.epochs_completed, []).append(member)
    for epochs_completed in sorted(starting):
        group = starting[epochs_completed]
        if epochs_completed >= spec.training.epochs:
            for member in group:
                member.status = "succeeded"
            continue
        _train_group(
            spec,
            group,
            data=data,
            device=target,
            on_epoch=on_epoch,
            cuda_graphs=cuda_graphs,
            checkpoints=CheckpointClock(checkpoint_interval),
        )
    outcomes = {member.position: _outcome(member, member.status or "succeeded") for member in run_members}
    return [outcomes[position] for position in range(len(chosen))]
