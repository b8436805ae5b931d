"""Synthetic metric tables shaped like the service's, for the results tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class SyntheticArm:
    """How one activation behaves in the synthetic experiment."""

    label: str
    name: str
    final_accuracy: float
    noise: float = 0.01
    epoch_seconds: float = 0.1
    statuses: Mapping[int, str] = field(default_factory=dict)
    # Per-layer gradient norms as a multiple of the last layer's (first layer first).
    gradient_profile: Sequence[float] = (1.0, 1.0, 1.0)
    dead_fraction: float | None = None
    saturated_fraction: float | None = None
    parameters: Mapping[str, float] | None = None


def synthetic_tables(
    arms: Sequence[SyntheticArm], *, seeds: Sequence[int] = (0, 1, 2, 3), epochs: int = 5, random_seed: int = 7
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, metrics, layer_metrics) with accuracy rising linearly to each arm's final accuracy plus noise."""
    generator = np.random.default_rng(random_seed)
    runs: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    layers: list[dict[str, Any]] = []
    for index, arm in enumerate(arms):
        for seed in seeds:
            run_id = f"{arm.label}-{seed}"
            status = arm.statuses.get(seed, "succeeded")
            runs.append(
                {
                    "run_id": run_id,
                    "activation": arm.label,
                    "activation_name": arm.name,
                    "activation_index": index,
                    "seed": seed,
                    "status": status,
                }
            )
            recorded = 0 if status in ("failed", "cancelled", "queued") else epochs
            if status == "diverged":
                recorded = max(1, epochs // 2)
            offset = generator.normal(0.0, arm.noise)
            for epoch in range(1, recorded + 1):
                accuracy = min(1.0, arm.final_accuracy * (0.5 + 0.5 * epoch / epochs) + offset)
                diverged_epoch = status == "diverged" and epoch == recorded
                metrics.append(
                    {
                        "run_id": run_id,
                        "activation": arm.label,
                        "activation_index": index,
                        "seed": seed,
                        "status": status,
                        "epoch": epoch,
                        "train_accuracy": accuracy + 0.03,
                        "test_accuracy": accuracy,
                        "train_loss": math.nan if diverged_epoch else 1.0 - accuracy,
                        "test_loss": math.nan if diverged_epoch else 1.1 - accuracy,
                        "epoch_seconds": arm.epoch_seconds,
                    }
                )
                for layer, multiple in enumerate(arm.gradient_profile, start=1):
                    layers.append(
                        {
                            "run_id": run_id,
                            "activation": arm.label,
                            "activation_name": arm.name,
                            "activation_index": index,
                            "seed": seed,
                            "status": status,
                            "epoch": epoch,
                            "layer": layer,
                            "layer_name": f"linear{layer}",
                            "grad_norm": 0.5 * multiple,
                            "dead_fraction": arm.dead_fraction if layer < len(arm.gradient_profile) else None,
                            "saturated_fraction": (
                                arm.saturated_fraction if layer < len(arm.gradient_profile) else None
                            ),
                            "activation_parameters": (
                                dict(arm.parameters) if arm.parameters and layer < len(arm.gradient_profile) else None
                            ),
                        }
                    )
    metric_columns = ["run_id", "activation", "activation_index", "seed", "status", "epoch"]
    metric_columns += ["train_accuracy", "test_accuracy", "train_loss", "test_loss", "epoch_seconds"]
    layer_columns = ["run_id", "activation", "activation_name", "activation_index", "seed", "status", "epoch"]
    layer_columns += [
        "layer",
        "layer_name",
        "grad_norm",
        "dead_fraction",
        "saturated_fraction",
        "activation_parameters",
    ]
    return (
        pd.DataFrame(runs),
        pd.DataFrame(metrics, columns=metric_columns),
        pd.DataFrame(layers, columns=layer_columns),
    )
