"""Gradient-flow diagnostics per activation and a plain-language recommendation built only from measured numbers.

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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from app.catalog import ACTIVATIONS, EXPLODING_RATIO, VANISHING_RATIO, canonical_activation_name
from app.numbers import finite_or_none

DIAGNOSED_STATUSES: tuple[str, ...] = ("succeeded", "diverged")
# A dead or saturated share this large in the mean layer is enough to stop most of a layer learning.
NOTABLE_DEAD_FRACTION = 0.5
NOTABLE_SATURATED_FRACTION = 0.5
# "Near chance": less than this share of the way from chance accuracy to perfect accuracy.
NEAR_CHANCE_SHARE = 0.1
# Epoch times within this relative margin of the fastest are reported as "about the same".
SIMILAR_COST_MARGIN = 0.1

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
    "learnable",
    "learned_parameters",
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
    if "activation_parameters" not in table.columns:
        table["activation_parameters"] = None
    if "activation_name" not in table.columns:
        table["activation_name"] = table["activation"]
    table["run_id"] = table["run_id"].astype(str)
    return table


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
    rows: list[dict[str, Any]] = []
    for label, index in order:
        name = str(names.get(label, label))
        canonical = canonical_activation_name(name) or name
        info = ACTIVATIONS.get(canonical)
        learnable = bool(info and (info.learnable or canonical == "custom"))
        of_label = diagnosed[diagnosed["activation"] == label]
        first_ratios: list[float] = []
        last_ratios: list[float] = []
        first_epochs: list[int] = []
        last_epochs: list[int] = []
        dead: list[float] = []
        saturated: list[float] = []
        parameters: list[dict[str, Any]] = []
        seeds: list[int] = []
        run_ids: list[str] = []
        for run_id, run_layers in of_label.groupby("run_id", sort=False):
            seeds.append(int(run_layers["seed"].iloc[0]))
            run_ids.append(str(run_id))
            ratios = _run_ratios(run_layers)
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
                "vanishing": any(ratio < VANISHING_RATIO for ratio in measured),
                "exploding": any(ratio > EXPLODING_RATIO for ratio in measured),
                "dead_fraction": float(np.mean(dead)) if dead else math.nan,
                "saturated_fraction": float(np.mean(saturated)) if saturated else math.nan,
                "learnable": learnable,
                "learned_parameters": learned,
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
    table = table[table["status"].isin(DIAGNOSED_STATUSES)]
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


@dataclass(frozen=True)
class RecommendationInputs:
    """What the recommendation reads: the summary, pairwise comparisons, diagnostics and chance accuracy."""

    summary: pd.DataFrame
    pairs: pd.DataFrame | None
    diagnostics: pd.DataFrame | None
    final_accuracy: Mapping[str, float] | None = None
    classes: int | None = None
    alpha: float = 0.05


def _number(value: float | None) -> str:
    """Three significant digits, plainly."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3g}"


def _join(labels: Sequence[str]) -> str:
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def outcomes_against_best(summary: pd.DataFrame, pairs: pd.DataFrame | None) -> tuple[str | None, dict[str, str]]:
    """The top-ranked activation and, for every other ranked one, its paired outcome against it (win/tie/loss/...)."""
    ranked = summary[summary["rank"].notna()].sort_values(["rank", "activation_index"], kind="stable")
    if ranked.empty:
        return None, {}
    best = str(ranked["activation"].iloc[0])
    outcomes: dict[str, str] = {}
    if pairs is None or pairs.empty:
        return best, outcomes
    against_best = pairs[pairs["opponent"] == best]
    for label in ranked["activation"].iloc[1:]:
        match = against_best[against_best["activation"] == label]
        if not match.empty:
            outcomes[str(label)] = str(match["outcome"].iloc[0])
    return best, outcomes


# Below this many seeds a tie says little (Wilcoxon needs 6 non-zero differences to reach p < 0.05).
FEW_SEEDS = 5


def tied_best(summary: pd.DataFrame, pairs: pd.DataFrame | None) -> list[str]:
    """The top-ranked activation followed by those statistically tied with it."""
    best, outcomes = outcomes_against_best(summary, pairs)
    if best is None:
        return []
    return [best, *[label for label, outcome in outcomes.items() if outcome == "tie"]]


def _best_sentences(inputs: RecommendationInputs) -> list[str]:
    summary = inputs.summary
    best, outcomes = outcomes_against_best(summary, inputs.pairs)
    if best is None:
        return ["No activation has a finished run with a usable value of the metric yet, so nothing can be ranked."]
    row = summary[summary["activation"] == best].iloc[0]
    metric = str(row["metric"])
    interval = (
        f", 95% CI {_number(row['ci_low'])} to {_number(row['ci_high'])}"
        if finite_or_none(row["ci_low"]) is not None
        else ""
    )
    sentences = [
        f"{best} ranks first on {metric} ({row['summary']}): mean {_number(row['mean'])}{interval}, "
        f"over {int(row['n'])} seed{'s' if int(row['n']) != 1 else ''}."
    ]
    grouped: dict[str, list[str]] = {}
    for label, outcome in outcomes.items():
        grouped.setdefault(outcome, []).append(label)
    tied = grouped.get("tie", [])
    if tied:
        verb = "is" if len(tied) == 1 else "are"
        sentences.append(
            f"{_join(tied)} {verb} statistically tied with {best} (paired test over shared seeds, "
            f"Holm-adjusted p >= {inputs.alpha:g}), so the best choice is any of {_join([best, *tied])}."
        )
    if grouped.get("loss"):
        sentences.append(
            f"{best} is significantly better than {_join(grouped['loss'])} (Holm-adjusted p < {inputs.alpha:g})."
        )
    if grouped.get("win"):
        sentences.append(
            f"{_join(grouped['win'])} beat{'s' if len(grouped['win']) == 1 else ''} {best} on the seeds both "
            f"finished (Holm-adjusted p < {inputs.alpha:g}) although {best} has the better mean over all its seeds."
        )
    if grouped.get("insufficient"):
        sentences.append(
            f"{_join(grouped['insufficient'])} could not be tested against {best}: "
            "fewer than two seeds where both finished."
        )
    largest_n = int(summary["n"].max()) if not summary.empty else 0
    if largest_n < 2:
        sentences.append("With at most one seed per activation no significance test is possible; add seeds.")
    elif tied and largest_n < FEW_SEEDS:
        sentences.append(
            f"With only {largest_n} seeds per activation the paired test has little power: a tie here means "
            "the difference is not established, not that it is absent; more seeds would sharpen the comparison."
        )
    return sentences


def _near_chance(inputs: RecommendationInputs) -> dict[str, float]:
    if not inputs.final_accuracy or not inputs.classes or inputs.classes < 2:
        return {}
    chance = 1.0 / inputs.classes
    limit = chance + NEAR_CHANCE_SHARE * (1.0 - chance)
    return {
        label: accuracy
        for label, accuracy in inputs.final_accuracy.items()
        if accuracy is not None and math.isfinite(accuracy) and accuracy < limit
    }


def _explanations(diagnostic: Mapping[str, Any] | None) -> list[str]:
    """Measured causes of poor training for one activation, each with its number."""
    if diagnostic is None:
        return []
    reasons = []
    ratios = [
        ratio
        for ratio in (
            finite_or_none(diagnostic.get("gradient_ratio_first_epoch")),
            finite_or_none(diagnostic.get("gradient_ratio_last_epoch")),
        )
        if ratio is not None
    ]
    vanishing = [ratio for ratio in ratios if ratio < VANISHING_RATIO]
    if vanishing:
        reasons.append(
            f"vanishing gradients (first-to-last layer gradient-norm ratio {_number(min(vanishing))}, "
            f"below {VANISHING_RATIO:g})"
        )
    exploding = [ratio for ratio in ratios if ratio > EXPLODING_RATIO]
    if exploding:
        reasons.append(
            f"exploding gradients (first-to-last layer gradient-norm ratio {_number(max(exploding))}, "
            f"above {EXPLODING_RATIO:g})"
        )
    dead = finite_or_none(diagnostic.get("dead_fraction"))
    if dead is not None and dead >= NOTABLE_DEAD_FRACTION:
        reasons.append(f"dead units (on average {dead:.0%} of a layer's units never activate at the last epoch)")
    saturated = finite_or_none(diagnostic.get("saturated_fraction"))
    if saturated is not None and saturated >= NOTABLE_SATURATED_FRACTION:
        reasons.append(f"saturation (on average {saturated:.0%} of a layer's units saturated at the last epoch)")
    return reasons


def _failure_sentences(inputs: RecommendationInputs) -> tuple[list[str], set[str]]:
    summary = inputs.summary
    diagnostics = (
        {str(row["activation"]): row for row in inputs.diagnostics.to_dict("records")}
        if inputs.diagnostics is not None
        else {}
    )
    near_chance = _near_chance(inputs)
    sentences = []
    explained: set[str] = set()
    for row in summary.itertuples(index=False):
        label = str(row.activation)
        problems = []
        if int(row.diverged) > 0:
            problems.append(f"diverged in {int(row.diverged)} of {int(row.runs)} runs")
        if label in near_chance and inputs.classes:
            problems.append(
                f"stayed near chance (mean final test accuracy {_number(near_chance[label])} against "
                f"a chance level of {_number(1.0 / inputs.classes)})"
            )
        if not problems:
            continue
        reasons = _explanations(diagnostics.get(label))
        explained.add(label)
        sentence = f"{label} failed to train: it {_join(problems)}"
        if reasons:
            sentence += f"; the diagnostics show {_join(reasons)}."
        else:
            sentence += "; none of the measured diagnostics (gradient-norm ratio, dead or saturated units) explains it."
        sentences.append(sentence)
    for label, diagnostic in diagnostics.items():
        if label in explained:
            continue
        reasons = _explanations(diagnostic)
        if reasons:
            sentences.append(f"{label} trained but shows {_join(reasons)}.")
    excluded = {
        status: int(summary[status].sum())
        for status in ("failed", "cancelled", "timed_out")
        if status in summary.columns and int(summary[status].sum()) > 0
    }
    if excluded:
        parts = [f"{count} {status.replace('_', ' ')}" for status, count in excluded.items()]
        sentences.append(f"Runs left out of the statistics: {_join(parts)}.")
    return sentences, explained


def _cost_sentences(summary: pd.DataFrame) -> list[str]:
    timed = summary[summary["mean_epoch_seconds"].notna() & (summary["mean_epoch_seconds"] > 0)]
    if len(timed) < 2:
        return []
    base = float(timed["mean_epoch_seconds"].min())
    relative = [(str(row.activation), float(row.mean_epoch_seconds) / base) for row in timed.itertuples(index=False)]
    fastest = [label for label, ratio in relative if ratio <= 1.0 + SIMILAR_COST_MARGIN]
    slower = sorted(
        [(label, ratio) for label, ratio in relative if ratio > 1.0 + SIMILAR_COST_MARGIN],
        key=lambda item: item[1],
        reverse=True,
    )
    if not slower:
        return [
            f"Cost per epoch: every activation is within {SIMILAR_COST_MARGIN:.0%} of the fastest ({_number(base)} s)."
        ]
    verb = "is" if len(fastest) == 1 else "are"
    head = f"Cost per epoch: {_join(fastest)} {verb} fastest ({_number(base)} s per epoch"
    head += ")" if len(fastest) == 1 else f", within {SIMILAR_COST_MARGIN:.0%} of each other)"
    listed = _join([f"{label} {ratio:.2g}x" for label, ratio in slower])
    return [head + f"; relative to the fastest: {listed}."]


def _learned_sentences(diagnostics: pd.DataFrame | None) -> list[str]:
    if diagnostics is None:
        return []
    sentences = []
    for row in diagnostics.to_dict("records"):
        learned = row.get("learned_parameters")
        if not row.get("learnable") or not isinstance(learned, Mapping) or not learned:
            continue
        shown = list(learned.items())[:4]
        values = ", ".join(f"{name} = {_number(value)}" for name, value in shown)
        more = f" (and {len(learned) - len(shown)} more)" if len(learned) > len(shown) else ""
        sentences.append(f"{row['activation']} learned {values}{more} at the last epoch (mean over layers and seeds).")
    return sentences


def recommend(inputs: RecommendationInputs) -> list[str]:
    """Plain-language findings, each one following from the numbers in the inputs."""
    sentences = _best_sentences(inputs)
    failures, _ = _failure_sentences(inputs)
    sentences.extend(failures)
    sentences.extend(_cost_sentences(inputs.summary))
    sentences.extend(_learned_sentences(inputs.diagnostics))
    return sentences
