"""Stacked networks: ordinary member models of one architecture as one model, and each member copied back out.

``build_stacked_model`` stacks mlp (``StackedPerceptron``) and cnn (``StackedConvolutionalNetwork``)
members; ``member_sources`` maps an ordinary model's state names to the stacked tensors they live in,
which is how a member's tensors and optimizer state go into the stack and come back
(``copy_member_into``) for checkpoints and at the member's end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worker.training.models import ActivationNetwork, ConvolutionalNetwork, MultilayerPerceptron
from worker.training.stacked.layers import (
    StackedActivation,
    StackedConvolution,
    StackedLinear,
    StackedNorm,
    as_linear,
    parameter_attribute,
)

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
            StackedLinear([as_linear(model.linears[index]) for model in models]) for index in range(len(first.linears))
        )
        self.norms = nn.ModuleList(
            StackedNorm([model.norms[index] for model in models]) for index in range(len(first.norms))
        )
        self.sites = nn.ModuleList(_site_activations(models, "activations", activation_indices))
        self.skips = list(first.skips)
        self.output = StackedLinear([as_linear(model.output) for model in models])
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
            StackedDiagnosticLayer(self.layer_names[index], (parameter_attribute(linear, "weight"),), index)
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
            StackedLinear([as_linear(model.linears[index]) for model in models]) for index in range(len(first.linears))
        )
        self.sites = nn.ModuleList(
            _site_activations(models, "activations", activation_indices)
            + _site_activations(models, "hidden_activations", activation_indices)
        )
        self.blocks = blocks
        self.output = StackedLinear([as_linear(model.output) for model in models])
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
        weights = [parameter_attribute(convolution, "weight") for convolution in self.convolutions]
        weights += [parameter_attribute(linear, "weight") for linear in self.linears]
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


def member_sources(stacked: StackedNetwork, member: int) -> dict[str, tuple[Tensor, bool]]:
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
        for name, (tensor, sliced) in member_sources(stacked, member).items():
            target = targets[name]
            source = tensor[member] if sliced else tensor
            if source is not target:
                target.copy_(source)
