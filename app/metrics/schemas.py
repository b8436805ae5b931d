"""Row schemas of the metric tables (JSON objects, or CSV columns in the same order)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.spec_evaluation import RobustnessKind


class EpochMetricRow(BaseModel):
    """One epoch of one run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                    "activation": "relu",
                    "seed": 0,
                    "cell": None,
                    "epoch": 1,
                    "step": 40,
                    "train_loss": 1.52,
                    "train_accuracy": 0.46,
                    "test_loss": 1.31,
                    "test_accuracy": 0.55,
                    "val_loss": None,
                    "val_accuracy": None,
                    "epoch_seconds": 0.41,
                    "samples_per_second": 9756.1,
                    "lr": 0.001,
                    "grad_norm_ratio": 0.62,
                    "gradient_flag": None,
                    "time_grad_norm_ratio": None,
                    "time_grad_log_slope": None,
                    "time_gradient_flag": None,
                    "train_metrics": "running",
                }
            ]
        }
    )

    run_id: uuid.UUID
    activation: str = Field(description="The activation label.")
    seed: int
    cell: str | None = Field(
        description="The run's cell label (hidden=16x32, init=default); empty without factors. A factorial experiment "
        "adds one column per factor path after the fixed ones (lists as compact JSON text)."
    )
    epoch: int = Field(description="1 for the first epoch (0: the network at initialisation).")
    step: int | None = Field(
        description="Optimiser steps taken before the row's measurements: epoch x batches per epoch (0 at "
        "initialisation); empty for rows recorded before the column existed."
    )
    train_loss: float | None = Field(description="Null in JSON (nan in CSV) when it was not finite.")
    train_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    val_loss: float | None = Field(description="Empty unless the spec holds out a validation fraction.")
    val_accuracy: float | None
    epoch_seconds: float | None
    samples_per_second: float | None
    lr: float | None = Field(description="The learning rate used in the epoch.")
    grad_norm_ratio: float | None = Field(description="First-layer over last-layer gradient norm.")
    gradient_flag: str | None = Field(description="vanishing, exploding, or empty.")
    time_grad_norm_ratio: float | None = Field(
        description="The gradient through time of the Elman cell (model.cell rnn): ||dL/dh_1|| over ||dL/dh_T|| of "
        "the first recurrent layer on the probe set; empty for other models (see the run's time_gradients)."
    )
    time_grad_log_slope: float | None = Field(
        description="Least-squares slope of ln ||dL/dh_t|| per step back in time (negative: the gradient shrinks "
        "as it flows back); empty for other models."
    )
    time_gradient_flag: str | None = Field(
        description="vanishing, exploding, or empty: time_grad_norm_ratio against the thresholds of gradient_flag."
    )
    train_metrics: str = Field(
        description="How train_loss and train_accuracy were measured (the spec's training.train_metrics): running "
        "(the mean over the epoch's batches as they trained) or after_epoch (the whole training split in eval mode "
        "after the epoch's steps)."
    )


class LayerMetricRow(BaseModel):
    """Diagnostics of one layer in one epoch of one run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                    "activation": "prelu",
                    "seed": 0,
                    "cell": None,
                    "epoch": 1,
                    "layer": 0,
                    "layer_name": "hidden.0",
                    "grad_norm": 0.021,
                    "weight_norm": 9.8,
                    "activation_mean": 0.31,
                    "activation_std": 0.52,
                    "dead_fraction": 0.02,
                    "saturated_fraction": 0.0,
                    "activation_parameters": {"weight": 0.23},
                    "time_grad_norms": None,
                }
            ]
        }
    )

    run_id: uuid.UUID
    activation: str
    seed: int
    cell: str | None = Field(
        description="The run's cell label (hidden=16x32, init=default); empty without factors. A factorial experiment "
        "adds one column per factor path after the fixed ones (lists as compact JSON text)."
    )
    epoch: int
    layer: int = Field(description="0 for the layer nearest the input.")
    layer_name: str
    grad_norm: float | None
    weight_norm: float | None
    activation_mean: float | None
    activation_std: float | None
    dead_fraction: float | None = Field(description="Share of units never positive on the probe set.")
    saturated_fraction: float | None = Field(description="Share of units saturated on the probe set.")
    activation_parameters: dict[str, Any] | None = Field(
        description="Learned activation parameters (a JSON object; a JSON string in CSV)."
    )
    time_grad_norms: list[float | None] | None = Field(
        description="||dL/dh_t|| for t = 1..T on the probe set, for each recurrent layer of the Elman cell (model.cell "
        "rnn; a JSON list, a JSON string in CSV); empty for other layers and models."
    )


class RobustnessRow(BaseModel):
    """Test accuracy of one trained run under one perturbation of one strength (spec version 2's evaluation block)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "run_id": "4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                    "activation": "relu",
                    "seed": 0,
                    "cell": None,
                    "kind": "pgd",
                    "strength": 0.05,
                    "accuracy": 0.41,
                    "loss": 1.87,
                }
            ]
        }
    )

    run_id: uuid.UUID
    activation: str = Field(description="The activation label.")
    seed: int
    cell: str | None = Field(
        description="The run's cell label; empty without factors. A factorial experiment adds one column per factor "
        "path after the fixed ones, as the metric table does."
    )
    kind: RobustnessKind = Field(
        description="noise (additive Gaussian input noise), fgsm or pgd (adversarial attacks)."
    )
    strength: float = Field(description="The noise standard deviation or the attack epsilon, in standardised units.")
    accuracy: float | None = Field(description="Test accuracy under the perturbation.")
    loss: float | None = Field(description="Mean test cross-entropy under it; null in JSON when not finite.")
