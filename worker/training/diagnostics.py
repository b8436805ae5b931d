"""Gradient-flow diagnostics: per-layer gradient and weight norms, activation statistics, dead and saturated units.

Gradient norms are measured every training step, before any clipping (the raw flow is
what tells vanishing from exploding), and summed on the device; the epoch's means are
read once. Activation statistics come from one probe pass per epoch over a fixed probe
set (the first ``min(1000, len(train))`` training examples, the same for every seed and
activation), in eval mode without gradients, through forward hooks on the activation
modules. A unit is a feature of a fully connected or recurrent layer and a channel of a
conv layer; a recurrent layer's activation runs once per step, and every call counts.

The gradient through time (our own Elman layers, ``ActivationNetwork.time_gradients`` "measured"):
after the epoch, one more pass over the same probe set, in eval mode with gradients, gives
||dL/dh_t|| for every step t of every recurrent layer (L the mean cross-entropy over the probe set,
the norm over all probe examples and units), by ``torch.autograd.grad`` on the hidden states, so the
parameters' gradients and the random stream are untouched. The first recurrent layer's per-step norms
give the epoch's ratio dL/dh_1 over dL/dh_T, its log-slope per step back in time and the flag over time,
by the same rule as the flag over depth (``app.gradient_flow``). nn.GRU/nn.LSTM keep their per-step
states inside one fused kernel: their runs say "not measured" (``RunInfo.time_gradients``).

Epoch 0 (the network at initialisation) has no training steps: its gradient norms come from one
forward and backward pass in training mode over the gradient probe batch, the first ``batch_size``
training examples in order (``gradient_probe_batch``), run inside ``probe_leaves_no_trace``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional

from app.catalog import (
    ACTIVATIONS,
    PROBE_EXAMPLES,
    SATURATED_SHARE,
    SIGMOID_SATURATION_BOUNDS,
    TANH_SATURATION_LEVEL,
)
from app.gradient_flow import GradientFlag, gradient_flag, gradient_norm_ratio, log_slope_back_in_time
from app.numbers import finite_or_none, finite_tree
from app.spec import ActivationSpec
from worker.training.models import TIME_GRADIENTS_MEASURED, DiagnosticLayer
from worker.training.reports import LayerReport

LayerDiagnostics = tuple[list[LayerReport], float | None, GradientFlag | None]
"""One model's (or one stacked member's) layer reports, first/last gradient-norm ratio and flag for an epoch."""
# The probe runs in chunks so a wide conv net on 1000 images stays within memory.
PROBE_BATCH_SIZE = 250


def probe_inputs(train_inputs: torch.Tensor, *, examples: int = PROBE_EXAMPLES) -> torch.Tensor:
    """The fixed probe set: the first ``min(examples, len(train))`` training inputs."""
    return train_inputs[: min(examples, train_inputs.shape[0])]


def time_gradient_summary(layers: Sequence[LayerReport]) -> tuple[float | None, float | None, GradientFlag | None]:
    """The epoch's gradient through time from the first layer with per-step norms: (ratio, log-slope, flag).

    The ratio is ||dL/dh_1|| over ||dL/dh_T||, the log-slope ``log_slope_back_in_time``; all None for a
    model without a traced recurrence.
    """
    norms = next((layer.time_grad_norms for layer in layers if layer.time_grad_norms), None)
    if norms is None:
        return None, None, None
    ratio = gradient_norm_ratio(norms)
    return ratio, log_slope_back_in_time(norms), gradient_flag(ratio)


def gradient_probe_batch(train_size: int, batch_size: int) -> slice:
    """Epoch 0's gradient probe batch: the first ``batch_size`` training examples (all of a smaller set)."""
    return slice(0, min(batch_size, train_size))


@contextlib.contextmanager
def probe_leaves_no_trace(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a training-mode probe pass that leaves no trace: epochs 1 and later are as if it never ran.

    The random streams (CPU and the device's: dropout draws from them) and the model's buffers (batch-norm
    running statistics and counters) come back as they were, the gradients are dropped, and the model is
    back in the mode it was in. Nothing is stepped, so parameters and optimiser state are untouched.
    """
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    was_training = model.training
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def time_gradient_norms(
    model: nn.Module, probe: torch.Tensor, labels: torch.Tensor, *, batch_size: int = PROBE_BATCH_SIZE
) -> torch.Tensor:
    """||dL/dh_t|| per (recurrent layer, step) on the probe set, a float64 device tensor; L the probe's mean loss."""
    was_training = model.training
    model.eval()
    squares: torch.Tensor | None = None
    examples = max(probe.shape[0], 1)
    try:
        with torch.enable_grad():
            for start in range(0, probe.shape[0], batch_size):
                logits, traces = model.forward_with_states(probe[start : start + batch_size])  # type: ignore[operator]
                loss = functional.cross_entropy(logits, labels[start : start + batch_size], reduction="sum") / examples
                states = [state for trace in traces for state in trace]
                gradients = torch.autograd.grad(loss, states)
                chunk = torch.stack([gradient.double().square().sum() for gradient in gradients])
                chunk = chunk.reshape(len(traces), -1)
                # Examples are independent: the squared norms of the chunks add up to the whole probe set's.
                squares = chunk if squares is None else squares + chunk
    finally:
        model.train(was_training)
    if squares is None:
        raise ValueError("the probe set is empty")
    return squares.sqrt()


class GradientNormTracker:
    """Running sums of each layer's weight-gradient L2 norm over an epoch's steps, kept on the device."""

    def __init__(self, layers: Sequence[DiagnosticLayer], *, device: torch.device) -> None:
        self.parameters = [weight for layer in layers for weight in layer.weights]
        # Which layer each weight belongs to: a recurrent layer's norm joins its input and recurrent weights.
        self.owners = torch.tensor(
            [index for index, layer in enumerate(layers) for _ in layer.weights], dtype=torch.long, device=device
        )
        self.sums = torch.zeros(len(layers), device=device)
        self.steps = 0

    def record(self) -> None:
        """Add this step's gradient norms; call after backward, before clipping and the optimizer step."""
        gradients = [
            parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            for parameter in self.parameters
        ]
        norms = torch.stack(torch._foreach_norm(gradients))
        squares = torch.zeros_like(self.sums).index_add_(0, self.owners, norms.float().square())
        self.sums += squares.sqrt()
        self.steps += 1

    def epoch_means(self) -> torch.Tensor:
        """Mean norm per layer over the steps recorded since the last reset (a device tensor)."""
        return self.sums / max(self.steps, 1)

    def reset(self) -> None:
        """Start a new epoch."""
        self.sums.zero_()
        self.steps = 0


@dataclass(frozen=True)
class SaturationRule:
    """How to tell a saturated output: sigmoid-like bounds or a tanh-like symmetric range."""

    kind: Literal["sigmoid", "tanh"]
    low: float
    high: float

    def saturated(self, outputs: torch.Tensor) -> torch.Tensor:
        """Boolean mask of saturated outputs."""
        if self.kind == "sigmoid":
            low, high = SIGMOID_SATURATION_BOUNDS
            return (outputs < low) | (outputs > high)
        centre = (self.low + self.high) / 2
        half_range = (self.high - self.low) / 2
        return (outputs - centre).abs() > TANH_SATURATION_LEVEL * half_range


def saturation_rule(module: nn.Module, activation: ActivationSpec) -> SaturationRule | None:
    """The saturation test of an activation module, None where saturation is not defined."""
    kind = getattr(module, "saturation", None)
    if kind == "sigmoid":
        return SaturationRule("sigmoid", 0.0, 1.0)
    if kind == "tanh":
        bounds = ACTIVATIONS[activation.canonical_name].bounds
        if bounds is not None:
            # A clipping unit (hardtanh) saturates at its own clip values, not at +-1.
            params = activation.resolved_params()
            return SaturationRule("tanh", float(params[bounds[0]]), float(params[bounds[1]]))
        return SaturationRule("tanh", -1.0, 1.0)
    return None


class ActivationStatistics:
    """Accumulates one activation module's outputs over the probe pass (all on the device)."""

    def __init__(self, *, can_die: bool, rule: SaturationRule | None) -> None:
        self.can_die = can_die
        self.rule = rule
        self.total: torch.Tensor | None = None
        self.total_squares: torch.Tensor | None = None
        self.count = 0
        self.unit_maximum: torch.Tensor | None = None
        self.unit_saturated: torch.Tensor | None = None
        self.unit_count = 0

    def add(self, outputs: torch.Tensor) -> None:
        """Fold one call's outputs (units on dim 1) into the running statistics."""
        values = outputs.detach()
        total = values.sum(dtype=torch.float64)
        squares = values.square().sum(dtype=torch.float64)
        self.total = total if self.total is None else self.total + total
        self.total_squares = squares if self.total_squares is None else self.total_squares + squares
        self.count += values.numel()
        # Units live on dim 1; every other dim (examples, positions) holds observations of a unit.
        observation_dims = [dim for dim in range(values.dim()) if dim != 1]
        self.unit_count += values.numel() // values.shape[1]
        if self.can_die:
            maximum = values.amax(dim=observation_dims)
            self.unit_maximum = maximum if self.unit_maximum is None else torch.maximum(self.unit_maximum, maximum)
        if self.rule is not None:
            saturated = self.rule.saturated(values).sum(dim=observation_dims)
            self.unit_saturated = saturated if self.unit_saturated is None else self.unit_saturated + saturated

    def summary(self) -> torch.Tensor:
        """[mean, std, dead_fraction, saturated_fraction] as a float64 tensor; NaN where undefined."""
        nan = torch.tensor(math.nan, dtype=torch.float64)
        if self.total is None or self.total_squares is None or self.count == 0:
            return nan.repeat(4)
        mean = self.total / self.count
        variance = (self.total_squares / self.count - mean.square()).clamp(min=0.0)
        dead = (self.unit_maximum <= 0).double().mean() if self.unit_maximum is not None else nan.to(self.total.device)
        saturated = (
            (self.unit_saturated.double() > SATURATED_SHARE * self.unit_count).double().mean()
            if self.unit_saturated is not None
            else nan.to(self.total.device)
        )
        return torch.stack([mean, variance.sqrt(), dead, saturated])


class GradientFlowMonitor:
    """Everything the diagnostics need for one model: gradient tracking during the epoch, a probe after it."""

    def __init__(
        self,
        layers: Sequence[DiagnosticLayer],
        *,
        activation: ActivationSpec,
        probe: torch.Tensor,
        probe_labels: torch.Tensor | None = None,
        probe_batch_size: int = PROBE_BATCH_SIZE,
    ) -> None:
        self.layers = list(layers)
        self.activation = activation
        self.probe = probe
        self.probe_labels = probe_labels
        self.probe_batch_size = probe_batch_size
        self.gradients = GradientNormTracker(self.layers, device=probe.device)

    def record_gradients(self) -> None:
        """Call after every backward pass."""
        self.gradients.record()

    def probe_statistics(self, model: nn.Module) -> list[ActivationStatistics | None]:
        """Run the probe set through the model in eval mode, collecting each activation's outputs."""
        statistics = [activation_statistics(layer.activation, self.activation) for layer in self.layers]
        handles = []
        for layer, collector in zip(self.layers, statistics, strict=True):
            if layer.activation is None or collector is None:
                continue

            def hook(_module: nn.Module, _inputs: Any, outputs: torch.Tensor, collector=collector) -> None:
                collector.add(outputs)

            handles.append(layer.activation.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, self.probe.shape[0], self.probe_batch_size):
                    model(self.probe[start : start + self.probe_batch_size])
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        return statistics

    def epoch_layers(self, model: nn.Module) -> LayerDiagnostics:
        """This epoch's layer reports, grad-norm ratio and flag; resets the gradient sums."""
        statistics = self.probe_statistics(model)
        device = self.probe.device
        rows = []
        for layer, collected in zip(self.layers, statistics, strict=True):
            with torch.no_grad():
                weight_norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(weight.detach().double()) for weight in layer.weights])
                )
            rows.append(torch.cat([weight_norm.reshape(1).to(device), summary_row(collected, device)]))
        gradient_means = self.gradients.epoch_means().double()
        # One host transfer for the whole epoch's diagnostics.
        table = torch.cat([torch.stack(rows), gradient_means.reshape(-1, 1)], dim=1).tolist()
        self.gradients.reset()
        diagnostics = layer_diagnostics(
            [layer.name for layer in self.layers], table, statistics, [layer.activation for layer in self.layers]
        )
        if getattr(model, "time_gradients", None) == TIME_GRADIENTS_MEASURED and self.probe_labels is not None:
            norms = time_gradient_norms(model, self.probe, self.probe_labels, batch_size=self.probe_batch_size)
            # The recurrent layers come first in diagnostic_layers, in the order of their traces.
            for report, steps in zip(diagnostics[0], norms.tolist(), strict=False):
                report.time_grad_norms = [finite_or_none(norm) for norm in steps]
        return diagnostics


def activation_statistics(module: nn.Module | None, activation: ActivationSpec) -> ActivationStatistics | None:
    """A collector for one activation module's probe outputs; None for a layer without an activation."""
    if module is None:
        return None
    return ActivationStatistics(
        can_die=bool(getattr(module, "can_die", False)), rule=saturation_rule(module, activation)
    )


def summary_row(collected: ActivationStatistics | None, device: torch.device) -> torch.Tensor:
    """A layer's [mean, std, dead_fraction, saturated_fraction] on the device; NaN for a layer without one."""
    if collected is None:
        return torch.full((4,), math.nan, dtype=torch.float64, device=device)
    return collected.summary().to(device)


def layer_diagnostics(
    names: Sequence[str],
    table: Sequence[Sequence[float]],
    statistics: Sequence[ActivationStatistics | None],
    activations: Sequence[nn.Module | None],
) -> LayerDiagnostics:
    """One model's layer reports, gradient-norm ratio and flag from its epoch table.

    Row ``i`` of ``table`` is layer ``i``'s [weight_norm, mean, std, dead, saturated, grad_norm];
    ``statistics`` and ``activations`` are the layer's probe collector and activation module (None
    where the layer has none). Non-finite numbers become None; a dead or saturated fraction is
    reported only where the activation defines one.
    """
    reports = []
    for index, (name, row, collected, activation) in enumerate(zip(names, table, statistics, activations, strict=True)):
        weight_norm, mean, std, dead, saturated, grad_norm = row
        parameter_values = getattr(activation, "parameter_values", None)
        reports.append(
            LayerReport(
                layer=index + 1,
                layer_name=name,
                grad_norm=finite_or_none(grad_norm),
                weight_norm=finite_or_none(weight_norm),
                activation_mean=finite_or_none(mean),
                activation_std=finite_or_none(std),
                dead_fraction=finite_or_none(dead) if collected is not None and collected.can_die else None,
                saturated_fraction=(
                    finite_or_none(saturated) if collected is not None and collected.rule is not None else None
                ),
                activation_parameters=finite_tree(parameter_values()) if callable(parameter_values) else None,
            )
        )
    ratio = gradient_norm_ratio([report.grad_norm for report in reports])
    return reports, ratio, gradient_flag(ratio)
