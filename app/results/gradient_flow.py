"""Gradient flow as tables that scale with depth: a layer x epoch map and a per-layer profile at one epoch.

Both read the layer metrics of the runs that trained (succeeded, diverged, or still running). The map is the
log10 of each layer's gradient norm per epoch, averaged over seeds in log space (a geometric mean, as the
diagnostics' ratios are); the profile is one metric against the layer index at one epoch, the cross-seed
mean with the seeds' range as its band. The static plots (app.results.gradient_flow_plots), the report's
interactive plots and GET /v1/experiments/{id}/gradient-flow all draw these same tables.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from app.results.statistics import StatisticsError

LayerMetricName = Literal["grad_norm", "dead_fraction", "saturated_fraction"]
# The per-layer metrics a profile can show, with the axis text of each.
PROFILE_METRICS: dict[str, str] = {
    "grad_norm": "gradient norm",
    "dead_fraction": "dead fraction of units",
    "saturated_fraction": "saturated fraction of units",
}
# Metrics whose values span orders of magnitude: averaged over seeds in log space, drawn on a log axis.
LOG_METRICS = frozenset({"grad_norm"})
TRAINED_STATUSES = ("succeeded", "diverged", "running")
HEATMAP_COLUMNS = ["activation", "activation_index", "layer", "layer_name", "epoch", "n", "log10_grad_norm"]
PROFILE_COLUMNS = ["activation", "activation_index", "metric", "epoch", "layer", "layer_name", "n"]
PROFILE_COLUMNS += ["mean", "seed_min", "seed_max"]


def trained_layer_rows(layers: pd.DataFrame) -> pd.DataFrame:
    """The layer metrics of runs that trained: succeeded, diverged or still running (not failed or cancelled)."""
    if layers.empty or "status" not in layers.columns:
        return layers
    return layers[layers["status"].isin(TRAINED_STATUSES)]


def recorded_epochs(layers: pd.DataFrame) -> list[int]:
    """The epochs with layer metrics of a run that trained, ascending (0 is the network at initialisation)."""
    trained = trained_layer_rows(layers)
    if trained.empty or "epoch" not in trained.columns:
        return []
    return sorted(int(epoch) for epoch in trained["epoch"].dropna().unique())


def gradient_heatmap(layers: pd.DataFrame) -> pd.DataFrame:
    """Per (activation, layer, epoch): seeds measured and the mean over seeds of log10 gradient norm."""
    trained = trained_layer_rows(layers)
    if trained.empty:
        return pd.DataFrame(columns=HEATMAP_COLUMNS)
    measured = trained[np.isfinite(trained["grad_norm"].astype(float)) & (trained["grad_norm"] > 0)]
    measured = measured.assign(log10_grad_norm=np.log10(measured["grad_norm"].astype(float)))
    grouped = measured.groupby(["activation_index", "layer", "epoch"], sort=True)
    table = grouped.agg(
        activation=("activation", "first"),
        layer_name=("layer_name", "first"),
        n=("log10_grad_norm", "size"),
        log10_grad_norm=("log10_grad_norm", "mean"),
    ).reset_index()
    return table[HEATMAP_COLUMNS]


def layer_profile(layers: pd.DataFrame, *, metric: str, epoch: int | None) -> pd.DataFrame:
    """Per (activation, layer) at one epoch (default the last recorded): the cross-seed mean and the seeds' range.

    StatisticsError naming ``metric`` or ``epoch`` when the metric is not a layer metric or the epoch was not
    recorded.
    """
    if metric not in PROFILE_METRICS:
        raise StatisticsError(f"metric must be one of {', '.join(PROFILE_METRICS)}; got {metric!r}", field="metric")
    epochs = recorded_epochs(layers)
    if not epochs:
        return pd.DataFrame(columns=PROFILE_COLUMNS)
    chosen = epochs[-1] if epoch is None else epoch
    if chosen not in epochs:
        raise StatisticsError(
            f"epoch {chosen} has no layer metrics; recorded epochs: {_epoch_ranges(epochs)}", field="epoch"
        )
    trained = trained_layer_rows(layers)
    at_epoch = trained[(trained["epoch"] == chosen) & trained[metric].notna()]
    values = at_epoch[metric].astype(float)
    # A log metric's mean is taken in log space, where a zero norm has no place.
    usable = np.isfinite(values) & (values > 0) if metric in LOG_METRICS else np.isfinite(values)
    at_epoch = at_epoch[usable]
    rows = []
    for (activation_index, layer), group in at_epoch.groupby(["activation_index", "layer"], sort=True):
        seed_values = group[metric].to_numpy(dtype=float)
        mean = 10 ** np.log10(seed_values).mean() if metric in LOG_METRICS else seed_values.mean()
        # Rounding in log space must not put the mean of equal seeds outside their range.
        mean = float(np.clip(mean, seed_values.min(), seed_values.max()))
        rows.append(
            {
                "activation": group["activation"].iloc[0],
                "activation_index": int(activation_index),
                "metric": metric,
                "epoch": chosen,
                "layer": int(layer),
                "layer_name": group["layer_name"].iloc[0],
                "n": int(seed_values.size),
                "mean": mean,
                "seed_min": float(seed_values.min()),
                "seed_max": float(seed_values.max()),
            }
        )
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


def _epoch_ranges(epochs: list[int]) -> str:
    """Epochs as runs of consecutive numbers: '0..20' or '1..3, 5'."""
    parts = []
    start = previous = epochs[0]
    for epoch in [*epochs[1:], math.inf]:
        if epoch != previous + 1:
            parts.append(str(start) if start == previous else f"{start}..{previous}")
            start = epoch  # type: ignore[assignment]
        previous = epoch  # type: ignore[assignment]
    return ", ".join(parts)
