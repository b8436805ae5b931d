"""What the engine reports: plain dataclasses, no torch, so any caller can store them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from app.spec import TrainMetrics
from app.spec_evaluation import RobustnessKind

ArmStatus = Literal["succeeded", "diverged", "cancelled"]


@dataclass
class LayerReport:
    """Gradient-flow diagnostics of one layer over one epoch."""

    layer: int
    layer_name: str
    grad_norm: float | None
    weight_norm: float | None
    activation_mean: float | None
    activation_std: float | None
    dead_fraction: float | None
    saturated_fraction: float | None
    activation_parameters: dict[str, Any] | None = None
    # ||dL/dh_t|| for t = 1..T on the probe set: recurrent layers of our own only (None elsewhere).
    time_grad_norms: list[float | None] | None = None


@dataclass
class EpochReport:
    """Everything measured in one epoch of one arm."""

    epoch: int
    # None when the loss is not finite (a diverged epoch).
    train_loss: float | None
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float
    # None for epoch 0, the network at initialisation: it trains nothing.
    epoch_seconds: float | None
    samples_per_second: float | None
    lr: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    grad_norm_ratio: float | None = None
    gradient_flag: Literal["vanishing", "exploding"] | None = None
    # The gradient through time of the first recurrent layer (diagnostics.time_gradient_summary); None elsewhere.
    time_grad_norm_ratio: float | None = None
    time_grad_log_slope: float | None = None
    time_gradient_flag: Literal["vanishing", "exploding"] | None = None
    diverged: bool = False
    layers: list[LayerReport] = field(default_factory=list)
    # How train_loss and train_accuracy were measured (the spec's training.train_metrics).
    train_metrics: TrainMetrics = "running"
    # Optimiser steps taken before this row's measurements (epoch x batches per epoch; 0 for epoch 0). None only in
    # a checkpoint written before the column existed.
    step: int | None = None

    def as_row(self) -> dict[str, Any]:
        """The epoch-level fields as a flat dict (layers excluded)."""
        row = asdict(self)
        row.pop("layers")
        return row


@dataclass
class RunInfo:
    """Facts about one arm's model, known before its first epoch."""

    init_scheme: str
    parameter_count: int
    device: str
    activation_placement: str
    training_path: Literal["unstacked", "stacked"] = "unstacked"
    # The gradient through time: None without a recurrence, "measured", or "not measured: why".
    time_gradients: str | None = None
    # Why the engine trained a stacked run's member alone after all (can_stack's reason); None otherwise.
    stacking_reason: str | None = None


@dataclass(frozen=True)
class RobustnessPoint:
    """Test accuracy and mean cross-entropy of one run under one perturbation of one strength."""

    kind: RobustnessKind
    strength: float
    accuracy: float
    loss: float


@dataclass
class ArmOutcome:
    """How one arm ended."""

    status: ArmStatus
    epochs_completed: int
    diverged_epoch: int | None = None
    info: RunInfo | None = None
    training_seconds: float = 0.0
    # Every epoch's report, a resumed arm's earlier epochs included.
    reports: list[EpochReport] = field(default_factory=list)
    # The evaluation block's points, measured once after the last epoch of a succeeded arm (empty otherwise).
    robustness: list[RobustnessPoint] = field(default_factory=list)
