"""Gradient-flow diagnostics per activation (the recommendation built on them is app/results/recommendation.py).

numpy and pandas only. The input is the per-(run, epoch, layer) table of layer metrics with the columns
``run_id, activation, activation_index, seed, status, epoch, layer, layer_name, grad_norm,
dead_fraction, saturated_fraction, activation_parameters`` (``activation_name`` where known).

Choices:

- Runs that ``succeeded`` or ``diverged`` are diagnosed (a diverged run's gradients are the explanation
  of its failure); failed, cancelled and unfinished runs are not. Non-finite values are skipped.
- The gradient-norm ratio of a run at an epoch is the first layer's mean gradient norm over the last
  layer's (layers ordered by their index), the quantity the engine flags; across seeds the ratios are
  averaged geometrically (the mean of their logarithms) because they spread over orders of magnitude.
  "First epoch" and "last epoch" are each run's first and last epoch with a finite ratio.
- Flags use the catalog thresholds: ``vanishing`` when the mean ratio at the first or the last epoch is
  below ``VANISHING_RATIO``, ``exploding`` when above ``EXPLODING_RATIO``.
- Dead and saturated fractions are the mean over layers and seeds at each run's last epoch; they are
  only measured for activations where they mean something (dead: ReLU family; saturated: sigmoid/tanh
  family), so they are empty elsewhere.
- Learned parameters (learnable activations) are each parameter's mean over layers and seeds at each
  run's last epoch; ``learned_parameters_by_layer`` keeps the layers apart for plots.
- The gradient through time (recurrent runs of the Elman cell, model.cell rnn): a run's ratio at an epoch
  is ||dL/dh_1|| over ||dL/dh_T|| of its first layer with per-step norms (``time_grad_norms``), averaged
  over seeds and flagged as the ratio over depth (``vanishing_over_time``, ``exploding_over_time``; empty
  where nothing was measured). ``time_gradients`` repeats what the runs say about it: "measured", or "not
  measured: why" for nn.GRU/nn.LSTM, empty without a recurrence.
- Epoch 0, the network at initialisation, is no trained epoch: "first" and "last epoch" are trained
  epochs (1, 2, ...). It has columns of its own, ``gradient_ratio_initial``, ``dead_fraction_initial``
  and ``saturated_fraction_initial`` (the same means over its layers and seeds), so units dead from
  the start tell apart from units that died in training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.catalog import ACTIVATIONS, canonical_activation_name
from app.gradient_flow import gradient_flag, gradient_norm_ratio

DIAGNOSED_STATUSES: tuple[str, ...] = ("succeeded", "diverged")

DIAGNOSTIC_COLUMNS: tuple[str, ...] = (
    "activation",
    "activation_index",
    "activation_name",
    "runs_diagnosed",
    "first_epoch",
    "last_epoch",
    "gradient_ratio_first_epoch",
    "gradient_ratio_last_epoch",
    "vanishing",
    "exploding",
    "dead_fraction",
    "saturated_fraction",
    "gradient_ratio_initial",
    "dead_fraction_initial",
    "saturated_fraction_initial",
    "learnable",
    "learned_parameters",
    "time_gradients",
    "time_gradient_ratio_first_epoch",
    "time_gradient_ratio_last_epoch",
    "vanishing_over_time",
    "exploding_over_time",
    "seeds",
    "run_ids",
)


def _geometric_mean(values: Sequence[float]) -> float:
    positive = [value for value in values if value is not None and math.isfinite(value) and value > 0]
    if not positive:
        return math.nan
    return float(np.exp(np.mean(np.log(positive))))


def _run_ratios(run_layers: pd.DataFrame) -> dict[int, float]:
    """Epoch -> first-layer over last-layer gradient norm of one run."""
    ratios: dict[int, float] = {}
    for epoch, group in run_layers.groupby("epoch", sort=True):
        ordered = group.sort_values("layer")
        first = float(ordered["grad_norm"].iloc[0])
        last = float(ordered["grad_norm"].iloc[-1])
        if len(ordered) < 2 or not math.isfinite(first) or not math.isfinite(last) or last == 0.0:
            continue
        ratio = first / last
        if math.isfinite(ratio):
            ratios[int(epoch)] = ratio
    return ratios


def _norm_list(value: Any) -> list[float | None] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, list) or not value:
        return None
    return [float(item) if isinstance(item, int | float) else None for item in value]


def _run_time_ratios(run_layers: pd.DataFrame) -> dict[int, float]:
    """Epoch -> ||dL/dh_1|| over ||dL/dh_T|| of one run's first layer with per-step norms."""
    ratios: dict[int, float] = {}
    for epoch, group in run_layers.groupby("epoch", sort=True):
        traced = [norms for norms in map(_norm_list, group.sort_values("layer")["time_grad_norms"]) if norms]
        ratio = gradient_norm_ratio(traced[0]) if traced else None
        if ratio is not None:
            ratios[int(epoch)] = ratio
    return ratios


def _flags(ratios: Sequence[float]) -> set[str | None]:
    return {gradient_flag(ratio) for ratio in ratios if math.isfinite(ratio)}


def _parameter_dict(value: Any) -> dict[str, Any] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def _average_parameters(dictionaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of each numeric parameter over the dictionaries that have it (lists are averaged element-wise)."""
    collected: dict[str, list[float]] = {}
    for dictionary in dictionaries:
        for name, value in dictionary.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(float(value)):
                collected.setdefault(name, []).append(float(value))
            elif isinstance(value, list):
                numbers = [float(item) for item in value if isinstance(item, int | float)]
                if numbers:
                    collected.setdefault(name, []).append(float(np.mean(numbers)))
    return {name: float(np.mean(values)) for name, values in collected.items()}


def _clean_layers(layer_metrics: pd.DataFrame) -> pd.DataFrame:
    table = layer_metrics.copy()
    for column in ("grad_norm", "dead_fraction", "saturated_fraction"):
        if column not in table.columns:
            table[column] = np.nan
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    for column in ("activation_parameters", "time_grad_norms"):
        if column not in table.columns:
            table[column] = None
    if "activation_name" not in table.columns:
        table["activation_name"] = table["activation"]
    table["run_id"] = table["run_id"].astype(str)
    return table


def _time_notes(runs: pd.DataFrame | None) -> dict[str, str]:
    """Activation label -> what its runs say about the gradient through time (the first that says anything)."""
    if runs is None or "time_gradients" not in runs.columns:
        return {}
    notes: dict[str, str] = {}
    for label, note in zip(runs["activation"], runs["time_gradients"], strict=True):
        if isinstance(note, str) and note:
            notes.setdefault(str(label), note)
    return notes


def summarise_diagnostics(layer_metrics: pd.DataFrame, *, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per activation: gradient-norm ratios and flags, dead and saturated fractions, learned parameters."""
    table = _clean_layers(layer_metrics)
    if runs is not None:
        labels = runs.sort_values("activation_index", kind="stable").drop_duplicates("activation")
        names = dict(
            zip(
                labels["activation"],
                labels["activation_name"] if "activation_name" in labels.columns else labels["activation"],
                strict=True,
            )
        )
        order = [
            (str(label), int(index))
            for label, index in zip(labels["activation"], labels["activation_index"], strict=True)
        ]
    else:
        labels = table.sort_values("activation_index", kind="stable").drop_duplicates("activation")
        names = dict(zip(labels["activation"], labels["activation_name"], strict=True))
        order = [
            (str(label), int(index))
            for label, index in zip(labels["activation"], labels["activation_index"], strict=True)
        ]
    diagnosed = table[table["status"].isin(DIAGNOSED_STATUSES)]
    time_notes = _time_notes(runs)
    rows: list[dict[str, Any]] = []
    for label, index in order:
        name = str(names.get(label, label))
        canonical = canonical_activation_name(name) or name
        info = ACTIVATIONS.get(canonical)
        learnable = bool(info and info.can_learn)
        of_label = diagnosed[diagnosed["activation"] == label]
        first_ratios: list[float] = []
        last_ratios: list[float] = []
        first_epochs: list[int] = []
        last_epochs: list[int] = []
        dead: list[float] = []
        saturated: list[float] = []
        initial_ratios: list[float] = []
        initial_dead: list[float] = []
        initial_saturated: list[float] = []
        parameters: list[dict[str, Any]] = []
        time_first: list[float] = []
        time_last: list[float] = []
        seeds: list[int] = []
        run_ids: list[str] = []
        for run_id, run_layers in of_label.groupby("run_id", sort=False):
            seeds.append(int(run_layers["seed"].iloc[0]))
            run_ids.append(str(run_id))
            initial = run_layers[run_layers["epoch"] == 0]
            initial_ratios.extend(_run_ratios(initial).values())
            initial_dead.extend(initial["dead_fraction"].dropna().tolist())
            initial_saturated.extend(initial["saturated_fraction"].dropna().tolist())
            run_layers = run_layers[run_layers["epoch"] > 0]
            ratios = _run_ratios(run_layers)
            time_ratios = _run_time_ratios(run_layers)
            if time_ratios:
                time_first.append(time_ratios[min(time_ratios)])
                time_last.append(time_ratios[max(time_ratios)])
            if ratios:
                first_epochs.append(min(ratios))
                last_epochs.append(max(ratios))
                first_ratios.append(ratios[min(ratios)])
                last_ratios.append(ratios[max(ratios)])
            last_epoch_layers = run_layers[run_layers["epoch"] == run_layers["epoch"].max()]
            dead.extend(last_epoch_layers["dead_fraction"].dropna().tolist())
            saturated.extend(last_epoch_layers["saturated_fraction"].dropna().tolist())
            for value in last_epoch_layers["activation_parameters"]:
                dictionary = _parameter_dict(value)
                if dictionary:
                    parameters.append(dictionary)
        ratio_first = _geometric_mean(first_ratios)
        ratio_last = _geometric_mean(last_ratios)
        measured = [ratio for ratio in (ratio_first, ratio_last) if math.isfinite(ratio)]
        learned = _average_parameters(parameters) if parameters else None
        time_ratios_measured = [_geometric_mean(time_first), _geometric_mean(time_last)]
        time_flags = _flags(time_ratios_measured)
        traced = bool(time_first)
        rows.append(
            {
                "activation": label,
                "activation_index": index,
                "activation_name": canonical,
                "runs_diagnosed": len(run_ids),
                "first_epoch": min(first_epochs) if first_epochs else None,
                "last_epoch": max(last_epochs) if last_epochs else None,
                "gradient_ratio_first_epoch": ratio_first,
                "gradient_ratio_last_epoch": ratio_last,
                "vanishing": "vanishing" in _flags(measured),
                "exploding": "exploding" in _flags(measured),
                "dead_fraction": float(np.mean(dead)) if dead else math.nan,
                "saturated_fraction": float(np.mean(saturated)) if saturated else math.nan,
                "gradient_ratio_initial": _geometric_mean(initial_ratios),
                "dead_fraction_initial": float(np.mean(initial_dead)) if initial_dead else math.nan,
                "saturated_fraction_initial": float(np.mean(initial_saturated)) if initial_saturated else math.nan,
                "learnable": learnable,
                "learned_parameters": learned,
                "time_gradients": time_notes.get(label),
                "time_gradient_ratio_first_epoch": time_ratios_measured[0],
                "time_gradient_ratio_last_epoch": time_ratios_measured[1],
                "vanishing_over_time": "vanishing" in time_flags if traced else None,
                "exploding_over_time": "exploding" in time_flags if traced else None,
                "seeds": ";".join(str(seed) for seed in seeds),
                "run_ids": ";".join(run_ids),
            }
        )
    frame = pd.DataFrame(rows, columns=list(DIAGNOSTIC_COLUMNS))
    for column in ("first_epoch", "last_epoch"):
        frame[column] = frame[column].astype("Int64")
    return frame


def learned_parameters_by_layer(layer_metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (activation, layer): each learned parameter's mean over the diagnosed seeds at their last epoch."""
    table = _clean_layers(layer_metrics)
    table = table[table["status"].isin(DIAGNOSED_STATUSES) & (table["epoch"] > 0)]
    rows: list[dict[str, Any]] = []
    last = table.groupby("run_id")["epoch"].transform("max")
    table = table[table["epoch"] == last]
    for (label, layer), group in table.groupby(["activation", "layer"], sort=False):
        dictionaries = [d for d in (_parameter_dict(value) for value in group["activation_parameters"]) if d]
        if not dictionaries:
            continue
        rows.append(
            {
                "activation": label,
                "activation_index": int(group["activation_index"].iloc[0]),
                "layer": int(layer),
                "layer_name": str(group["layer_name"].iloc[0]) if "layer_name" in group.columns else str(layer),
                "parameters": _average_parameters(dictionaries),
            }
        )
    frame = pd.DataFrame(rows, columns=["activation", "activation_index", "layer", "layer_name", "parameters"])
    return frame.sort_values(["activation_index", "layer"], kind="stable").reset_index(drop=True)
