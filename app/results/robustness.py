"""Robustness per activation: the statistics of the accuracy summaries, applied to each (kind, strength).

The robustness rows of a kind and strength are read as a table of one evaluated epoch per run whose test
accuracy is the accuracy under the perturbation, and summarised by ``summarise_activations``: the same
per-seed mean, bootstrap interval, paired comparison with the baseline, Holm correction (one family per
kind and strength) and verdict as the accuracy results. The generalisation gap beside each row is the
activation's train minus test accuracy at the last epoch, from the same function on the epoch table.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from app.results import comparisons
from app.results.statistics import SEED_STATISTIC_COLUMNS, ResultOptions, summarise_activations

ROBUSTNESS_SUMMARY_COLUMNS: tuple[str, ...] = (
    "activation",
    "activation_index",
    "kind",
    "strength",
    *SEED_STATISTIC_COLUMNS,
    "baseline",
    *comparisons.COMPARISON_COLUMNS,
    "verdict",
    "generalisation_gap",
    "seeds",
    "run_ids",
)
_KIND_ORDER = {"noise": 0, "fgsm": 1, "pgd": 2}


def accuracy_options(options: ResultOptions) -> ResultOptions:
    """The options with the metric fixed to the final test accuracy (baseline, alpha, margin and seeds kept)."""
    return dataclasses.replace(options, metric="test_accuracy", summary="final", threshold=None)


def summarise_robustness(
    robustness: pd.DataFrame, *, metrics: pd.DataFrame, runs: pd.DataFrame, options: ResultOptions
) -> pd.DataFrame:
    """One row per (kind, strength, activation), kinds in the order noise, fgsm, pgd and strengths ascending."""
    chosen = accuracy_options(options)
    if robustness.empty:
        return pd.DataFrame(columns=list(ROBUSTNESS_SUMMARY_COLUMNS))
    gaps = summarise_activations(metrics, options=chosen, runs=runs)[["activation", "generalisation_gap"]]
    points = sorted(
        {
            (str(kind), float(strength))
            for kind, strength in zip(robustness["kind"], robustness["strength"], strict=True)
        },
        key=lambda point: (_KIND_ORDER.get(point[0], len(_KIND_ORDER)), point[1]),
    )
    frames = []
    for kind, strength in points:
        rows = robustness[(robustness["kind"] == kind) & (robustness["strength"] == strength)]
        # One evaluated "epoch" per run whose test accuracy is the accuracy under this perturbation.
        evaluated = rows.assign(epoch=1, test_accuracy=rows["accuracy"])
        summary = summarise_activations(evaluated, options=chosen, runs=runs)
        summary = summary.assign(kind=kind, strength=strength).drop(columns=["generalisation_gap"])
        frames.append(summary.merge(gaps, on="activation", how="left"))
    return pd.concat(frames, ignore_index=True)[list(ROBUSTNESS_SUMMARY_COLUMNS)]
