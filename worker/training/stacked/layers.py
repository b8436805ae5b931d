"""Stacked layers: the members' copies of one layer as one module with a leading member axis.

Two layouts: fully connected layers hold (members, batch, features); conv layers hold
(batch, members * channels, *spatial) so one grouped convolution covers every member. Every stacked
parameter and buffer has the member axis first. Each activation site keeps every member's own
activation module (``StackedActivation``), so learnable activation parameters stay per member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from worker.training.activations import ActivationModule


def tensor_attribute(module: nn.Module, name: str) -> Tensor:
    """A module's tensor attribute (a parameter or buffer), checked to be one."""
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise ValueError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def parameter_attribute(module: nn.Module, name: str) -> nn.Parameter:
    """A module's parameter attribute, checked to be one."""
    value = getattr(module, name)
    if not isinstance(value, nn.Parameter):
        raise ValueError(f"{type(module).__name__}.{name} is not a parameter")
    return value


def as_linear(module: nn.Module) -> nn.Linear:
    """The module, checked to be an nn.Linear."""
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
            self.register_buffer(
                "running_mean", _stacked_buffer([tensor_attribute(layer, "running_mean") for layer in layers])
            )
            self.register_buffer(
                "running_var", _stacked_buffer([tensor_attribute(layer, "running_var") for layer in layers])
            )
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
        self.weight = _stacked_parameter([tensor_attribute(layer, "weight") for layer in layers])
        self.bias = _stacked_parameter([tensor_attribute(layer, "bias") for layer in layers])

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
                tensor_attribute(self, "running_mean").view(-1),
                tensor_attribute(self, "running_var").view(-1),
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
