"""Results across the cells of a factorial experiment: the per-run tables joined with each run's cell, fed to the
pure statistics of app.results.factorial, factorial_plots and factorial_advice.

- Per-run values: app.results.service ``run_values_table`` (one value per run under the chosen summary, inside
  its cell), with the run's cell label and one column per factor path (its level as ``app.spec_factors.level_text``).
  Only runs that entered the statistics count (``included``); the others are NaN, as the pure functions expect.
- ``view=ranking`` (``ranking_table``): one row per activation with its mean rank over the cells, its rank and
  seed mean in each cell, its mean rank per level of each factor (per dataset where ``dataset.name`` is a
  factor), and the omnibus test, critical difference and Nemenyi pairs of the whole ranking.
- ``view=effects`` (``effects_table``): one row per (factor, level, activation) with the mean over seeds and
  its interval, and the activation x factor ANOVA of that factor.
- An experiment without factors (version 1) has one cell: both views answer rows with status
  ``insufficient`` and the reason (a 200, as any other insufficient verdict), never an error.
- The recommendation of a factorial experiment leads with the how-to-choose sentences per condition, then
  each cell's own findings prefixed with the cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.results import service
from app.results.factorial import FactorEffect, Ranking, factor_effects, mean_ranks_by_level, rank_activations
from app.results.factorial_advice import CellResult, how_to_choose
from app.results.factorial_plots import FACTORIAL_PLOT_KINDS, factorial_plot
from app.results.failures import DEFAULT_CHANCE_MARGIN
from app.results.statistics import ResultOptions, StatisticsError, activation_order, trained_epochs
from app.service_errors import InvalidInputError
from app.spec_factors import level_text, pairing_note

ONE_CELL = "the experiment has one cell (no factors): ranking and effects compare activations across cells"


def _invalid(error: StatisticsError) -> InvalidInputError:
    return InvalidInputError([{"loc": f"query.{error.field or 'options'}", "msg": str(error), "type": "value_error"}])


def run_values(*, tables: service.ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per run: cell, activation, seed, value (NaN when it did not count) and its level per factor path."""
    table = service.run_values_table(tables=tables, options=options)
    columns = ["cell", "activation", "seed", "value", *tables.factors]
    if table.empty or "cell" not in table.columns:
        return pd.DataFrame(columns=columns)
    values = table[columns].copy()
    values["value"] = np.where(table["included"].astype(bool), table["value"].astype(float), math.nan)
    return values


def _orders(tables: service.ExperimentTables) -> tuple[list[str], list[str]]:
    """Activations in spec order and cell labels in cell order."""
    cells = [cell.label for cell in service.cell_tables(tables)]
    return activation_order(tables.runs) if not tables.runs.empty else [], cells


def ranking(*, tables: service.ExperimentTables, options: ResultOptions) -> Ranking:
    """Mean ranks over the cells with the Friedman (or Wilcoxon) test, Nemenyi pairs and the critical difference."""
    labels, cells = _orders(tables)
    values = run_values(tables=tables, options=options)
    try:
        return rank_activations(values, metric=options.metric, alpha=options.alpha, activations=labels, cells=cells)
    except StatisticsError as error:
        raise _invalid(error) from None


def effects(*, tables: service.ExperimentTables, options: ResultOptions) -> list[FactorEffect]:
    """Per factor: means over seeds per (level, activation) and the activation x factor ANOVA."""
    if not tables.factors:
        return []
    labels, _ = _orders(tables)
    levels: dict[str, Sequence[str]] = {
        path: [level_text(level) for level in found] for path, found in tables.factors.items()
    }
    try:
        return factor_effects(
            run_values(tables=tables, options=options),
            factors=list(tables.factors),
            levels=levels,
            activations=labels,
            resamples=options.resamples,
            random_seed=options.random_seed,
        )
    except StatisticsError as error:
        raise _invalid(error) from None


def _common(tables: service.ExperimentTables, options: ResultOptions) -> dict[str, Any]:
    """Columns of every ranking and effects row: the metric, summary, alpha and which seed pairing holds."""
    pairing = pairing_note(tables.spec) if tables.spec is not None else None
    return {"metric": options.metric, "summary": options.summary_label, "alpha": options.alpha, "pairing": pairing}


def ranking_table(*, tables: service.ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per activation: mean rank over cells, rank and seed mean per cell, the test, CD and Nemenyi pairs."""
    labels, _ = _orders(tables)
    if not tables.factors:
        rows = [
            {"activation": label, "status": "insufficient", "reason": ONE_CELL, **_common(tables, options)}
            for label in labels
        ]
        return service.with_trace(
            pd.DataFrame(rows, columns=["activation", "status", "reason", *_common(tables, options)]), tables.experiment
        )
    found = ranking(tables=tables, options=options)
    summary = found.as_dict()
    by_level = _mean_ranks_by_level(tables, found)
    shared = {
        key: summary[key]
        for key in (
            "status",
            "reason",
            "test",
            "statistic",
            "p_value",
            "iman_davenport_f",
            "iman_davenport_p",
            "critical_difference",
            "rejected",
            "cells",
            "excluded_cells",
        )
    }
    rows = []
    for label in found.activations:
        own = found.cell_ranks[found.cell_ranks["activation"] == label] if not found.cell_ranks.empty else None
        pairs = [pair for pair in summary["pairs"] if label in (pair["activation"], pair["opponent"])]
        rows.append(
            {
                "activation": label,
                "mean_rank": summary["mean_ranks"].get(label),
                "cell_ranks": dict(zip(own["cell"], own["rank"].astype(float), strict=True)) if own is not None else {},
                "cell_means": dict(zip(own["cell"], own["mean"].astype(float), strict=True)) if own is not None else {},
                "mean_rank_by_level": {factor: ranks.get(label, {}) for factor, ranks in by_level.items()},
                "nemenyi_p": {
                    (pair["opponent"] if pair["activation"] == label else pair["activation"]): pair["p_value"]
                    for pair in pairs
                },
                "different_from": [
                    pair["opponent"] if pair["activation"] == label else pair["activation"]
                    for pair in pairs
                    if pair["different"]
                ],
                **shared,
                **_common(tables, options),
            }
        )
    frame = pd.DataFrame(rows)
    if "mean_rank" in frame.columns and frame["mean_rank"].notna().any():
        frame = frame.sort_values("mean_rank", kind="stable").reset_index(drop=True)
    return service.with_trace(frame, tables.experiment)


def _mean_ranks_by_level(tables: service.ExperimentTables, found: Ranking) -> dict[str, dict[str, dict[str, float]]]:
    """Per factor, per activation: its mean rank over the ranked cells at each level (e.g. per dataset)."""
    cells = service.cell_tables(tables)
    levels = pd.DataFrame([{"cell": cell.label, **cell.levels} for cell in cells], columns=["cell", *tables.factors])
    found_by_level: dict[str, dict[str, dict[str, float]]] = {}
    for factor in tables.factors:
        table = mean_ranks_by_level(found, levels, factor)
        per_activation: dict[str, dict[str, float]] = {}
        for row in table.to_dict("records"):
            per_activation.setdefault(str(row["activation"]), {})[str(row["level"])] = float(row["mean_rank"])
        found_by_level[factor] = per_activation
    return found_by_level


EFFECT_TERMS = ("activation", "factor", "interaction")


def effects_table(*, tables: service.ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per (factor, level, activation): mean over seeds with its interval, and the factor's ANOVA terms."""
    if not tables.factors:
        row = {"factor": None, "status": "insufficient", "reason": ONE_CELL, **_common(tables, options)}
        return service.with_trace(pd.DataFrame([row]), tables.experiment)
    rows = []
    for effect in effects(tables=tables, options=options):
        terms = {f"{term}_{key}": value for term in EFFECT_TERMS for key, value in effect.term(term).items()}
        for record in effect.as_dict()["means"]:
            rows.append(
                {
                    "factor": effect.factor,
                    **record,
                    "status": effect.status,
                    "reason": effect.reason,
                    **terms,
                    **_common(tables, options),
                }
            )
    return service.with_trace(pd.DataFrame(rows), tables.experiment)


def plot_image(*, tables: service.ExperimentTables, kind: str, image_format: str, options: ResultOptions) -> bytes:
    """The critical-difference diagram or the interaction plot as PNG or SVG bytes (v1: a note saying why empty)."""
    labels, _ = _orders(tables)
    found = ranking(tables=tables, options=options) if kind == "critical-difference" else None
    return factorial_plot(
        kind,
        image_format=image_format,
        ranking=found,
        effects=effects(tables=tables, options=options) if kind == "interaction" else (),
        metric=options.metric,
        activations=labels or None,
        title=tables.experiment.name,
    )


def _cell_results(tables: service.ExperimentTables, options: ResultOptions) -> list[CellResult]:
    return [
        CellResult(
            label=cell.label,
            levels=cell.levels,
            summary=service.summary_table(tables=cell.tables, options=options),
            pairs=service.pairs_table(tables=cell.tables, options=options),
        )
        for cell in service.cell_tables(tables)
    ]


def how_to_choose_sentences(
    *, tables: service.ExperimentTables, options: ResultOptions, cells: list[CellResult] | None = None
) -> list[str]:
    """The how-to-choose sentences per condition from the per-cell summaries and pairs and the ANOVA."""
    found = cells if cells is not None else _cell_results(tables, options)
    return how_to_choose(found, effects=effects(tables=tables, options=options), alpha=options.alpha)


def recommendation(
    *, tables: service.ExperimentTables, options: ResultOptions, chance_margin: float = DEFAULT_CHANCE_MARGIN
) -> service.Recommendation:
    """The recommendation: for a factorial experiment how to choose per condition, then each cell's findings.

    best_choices are the activations best or shown equivalent to the best in every cell; not_trained those that
    did not train in some cell (the sentences name the cell). Without factors: service.recommendation.
    """
    if not tables.factors or tables.runs.empty or trained_epochs(tables.metrics).empty:
        return service.recommendation(tables=tables, options=options, chance_margin=chance_margin)
    results = _cell_results(tables, options)
    sentences = how_to_choose_sentences(tables=tables, options=options, cells=results)
    best: list[str] | None = None
    not_trained: list[str] = []
    corrections: list[str] = []
    for cell, result in zip(service.cell_tables(tables), results, strict=True):
        found = service.recommendation(
            tables=cell.tables,
            options=options,
            summary=result.summary,
            pairs=result.pairs,
            chance_margin=chance_margin,
        )
        sentences.extend(f"In cell {cell.label}: {sentence}" for sentence in found.sentences)
        best = found.best_choices if best is None else [label for label in best if label in found.best_choices]
        not_trained.extend(label for label in found.not_trained if label not in not_trained)
        if found.correction and found.correction not in corrections:
            corrections.append(found.correction)
    return service.Recommendation(
        sentences=sentences, best_choices=best or [], not_trained=not_trained, correction="; ".join(corrections)
    )


__all__ = ["FACTORIAL_PLOT_KINDS", "effects", "effects_table", "ranking", "ranking_table", "recommendation"]
