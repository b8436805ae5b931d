"""Rules of the results domain: load an experiment's tables and compute its results from them.

Every table leaves the service with trace columns (experiment id and name, spec hash, experiment
status and timestamps) in front, and the run ids and seeds it was computed from, so any row can be
traced back to its runs. Encoding the tables for a client is app.results.encoding's job; archives
(export and import) are app.archives'.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.experiments import service as experiments_service
from app.models import Experiment
from app.results import gallery, gradient_flow, gradient_flow_plots, repository
from app.results.diagnostics import learned_parameters_by_layer, summarise_diagnostics
from app.results.failures import DEFAULT_CHANCE_MARGIN, TrainingSetup, chance_accuracy
from app.results.plots import CURVE_METRICS, CURVE_RESAMPLES, PlotData, plot
from app.results.recommendation import RecommendationInputs, best_choices, recommend, untrained
from app.results.robustness import ROBUSTNESS_SUMMARY_COLUMNS, summarise_robustness
from app.results.robustness_plots import robustness_plot
from app.results.statistics import (
    ResultOptions,
    StatisticsError,
    compare_pairs,
    learning_curves,
    run_summaries,
    summarise_activations,
    trained_epochs,
)
from app.schemas import as_utc
from app.service_errors import InvalidInputError
from app.spec import ActivationSpec, ExperimentSpec, load_stored_spec
from app.spec_factors import cell_label, level_text, run_spec

TRACE_COLUMNS: tuple[str, ...] = (
    "experiment_id",
    "experiment_name",
    "spec_hash",
    "experiment_status",
    "experiment_created_at",
    "experiment_finished_at",
)


@dataclass
class ExperimentTables:
    """An experiment and its runs, epoch metrics and layer metrics as DataFrames."""

    experiment: Experiment
    spec: ExperimentSpec | None
    runs: pd.DataFrame
    metrics: pd.DataFrame
    layers: pd.DataFrame
    # Each run's cell (app.results.repository.CELL_COLUMNS); its labels and levels are NULL without factors.
    cells: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(repository.CELL_COLUMNS)))
    # Each run's robustness rows (app.results.repository.ROBUSTNESS_COLUMNS); none without an evaluation block.
    robustness: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(repository.ROBUSTNESS_COLUMNS)))

    @property
    def factors(self) -> dict[str, list[Any]]:
        """The spec's factors (path to levels); empty for an experiment without factors (version 1)."""
        return dict(self.spec.factors) if self.spec is not None and self.spec.factors else {}

    @property
    def activations(self) -> dict[str, ActivationSpec]:
        """The spec's activations by label."""
        if self.spec is None:
            return {}
        return {activation.display_label: activation for activation in self.spec.activations}

    @property
    def classes(self) -> int | None:
        """Number of classes of the dataset (chance accuracy is 1 / classes)."""
        return self.spec.dataset.classes if self.spec is not None else None


def stored_spec(experiment: Experiment) -> ExperimentSpec | None:
    """The experiment's canonical spec as a model, or None when it no longer parses."""
    try:
        return load_stored_spec(experiment.spec)
    except ValidationError:
        return None


def load_tables(*, session: Session, experiment_id: uuid.UUID, layers: bool = True) -> ExperimentTables:
    """Everything the results read for one experiment; NotFoundError when it does not exist.

    ``layers=False`` leaves the layer metrics (the largest table) out, empty, for tables that do not read them.
    """
    experiment = experiments_service.require_experiment(session=session, experiment_id=experiment_id)
    return ExperimentTables(
        experiment=experiment,
        spec=stored_spec(experiment),
        runs=repository.runs_frame(session=session, experiment_id=experiment_id),
        metrics=repository.epoch_metrics_frame(session=session, experiment_id=experiment_id),
        layers=(
            repository.layer_metrics_frame(session=session, experiment_id=experiment_id)
            if layers
            else pd.DataFrame(columns=list(repository.LAYER_COLUMNS))
        ),
        cells=repository.run_cells_frame(session=session, experiment_id=experiment_id),
        robustness=repository.robustness_frame(session=session, experiment_id=experiment_id),
    )


@dataclass(frozen=True)
class CellTables:
    """One cell of a factorial experiment: its label, levels (as level_text by path) and its runs' tables."""

    index: int
    label: str
    levels: dict[str, str]
    tables: ExperimentTables


def cell_tables(tables: ExperimentTables) -> list[CellTables]:
    """The cells that have runs, in cell order, each with its runs' tables and its effective spec (no factors)."""
    cells = []
    for index, group in tables.cells.groupby("cell_index", sort=True):
        levels = group["cell_levels"].iloc[0] or {}
        run_ids = set(group["run_id"])
        spec = run_spec(tables.experiment.spec, levels) if tables.spec is not None else None
        label = group["cell_label"].iloc[0] or cell_label(levels)
        part = ExperimentTables(
            experiment=tables.experiment,
            spec=spec,
            runs=tables.runs[tables.runs["run_id"].isin(run_ids)].reset_index(drop=True),
            metrics=tables.metrics[tables.metrics["run_id"].isin(run_ids)].reset_index(drop=True),
            layers=tables.layers[tables.layers["run_id"].isin(run_ids)].reset_index(drop=True),
            robustness=tables.robustness[tables.robustness["run_id"].isin(run_ids)].reset_index(drop=True),
        )
        texts = {path: level_text(levels[path]) for path in tables.factors if path in levels}
        cells.append(CellTables(index=int(index), label=str(label), levels=texts, tables=part))
    return cells


def _per_cell(tables: ExperimentTables, compute: Any) -> pd.DataFrame:
    """``compute(cell tables)`` for every cell, stacked, with the cell's label and levels after the trace columns."""
    frames = []
    for cell in cell_tables(tables):
        frame = compute(cell.tables)
        position = len(TRACE_COLUMNS)
        for offset, (column, value) in enumerate({"cell": cell.label, **cell.levels}.items()):
            frame.insert(position + offset, column, pd.Series([value] * len(frame), index=frame.index, dtype=object))
        frames.append(frame)
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else with_trace(pd.DataFrame(columns=["cell"]), tables.experiment)
    )


def _invalid_option(error: StatisticsError) -> InvalidInputError:
    return InvalidInputError([{"loc": f"query.{error.field or 'options'}", "msg": str(error), "type": "value_error"}])


def result_options(**values: Any) -> ResultOptions:
    """ResultOptions from query parameters; a bad value is a 422 naming the parameter."""
    try:
        return ResultOptions(**values)
    except StatisticsError as error:
        raise _invalid_option(error) from None


def _statistics_call(function: Any, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    try:
        return function(tables.metrics, options=options, runs=tables.runs)  # type: ignore[no-any-return]
    except StatisticsError as error:
        raise _invalid_option(error) from None


def _timestamp(value: datetime | None) -> pd.Timestamp | None:
    moment = as_utc(value)
    return pd.Timestamp(moment) if moment is not None else None


def with_trace(frame: pd.DataFrame, experiment: Experiment, extra: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """The table with the experiment's trace columns in front (and the ``extra`` columns at its end), built as one
    frame from its columns (no copy and insert per column)."""
    values: dict[str, Any] = {
        "experiment_id": str(experiment.id),
        "experiment_name": experiment.name,
        "spec_hash": experiment.spec_hash,
        "experiment_status": str(experiment.status),
        "experiment_created_at": _timestamp(experiment.created_at),
        "experiment_finished_at": _timestamp(experiment.finished_at),
    }
    columns: dict[str, pd.Series] = {}
    for column, value in values.items():
        series = pd.Series([value] * len(frame), index=frame.index, dtype=object)
        if column in ("experiment_created_at", "experiment_finished_at"):
            series = pd.to_datetime(series, utc=True)
        columns[column] = series
    for column, series in frame.items():
        if column not in values:
            columns[str(column)] = series
    columns.update(extra or {})
    # Nothing else holds these columns: no need to copy them (copy-on-write guards the frame they came from).
    return pd.DataFrame(columns, index=frame.index, copy=False)


def _run_times(summary: pd.DataFrame, tables: ExperimentTables) -> dict[str, pd.Series]:
    """Each activation's first run start and last run end (runs_started_at, runs_finished_at), by summary row."""
    runs = tables.runs
    times = {}
    for column, moment, pick in (("runs_started_at", "started_at", "min"), ("runs_finished_at", "finished_at", "max")):
        stamps = pd.to_datetime(runs[moment].map(as_utc), utc=True).groupby(runs["activation"], sort=False)
        times[column] = summary["activation"].map(getattr(stamps, pick)())
    return times


def summary_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per activation (per cell and activation with factors): statistics, rank, baseline comparison, run
    ids, seeds and timestamps, computed inside each cell."""
    if tables.factors:
        return _per_cell(tables, lambda part: summary_table(tables=part, options=options))
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation"]), tables.experiment)
    summary = _statistics_call(summarise_activations, tables, options)
    return with_trace(summary, tables.experiment, extra=_run_times(summary, tables))


def pairs_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """Every ordered pair of activations (inside each cell with factors) with its paired tests and outcome."""
    if tables.factors:
        return _per_cell(tables, lambda part: pairs_table(tables=part, options=options))
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation", "opponent"]), tables.experiment)
    return with_trace(_statistics_call(compare_pairs, tables, options), tables.experiment)


def run_values_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per run: its summary value of the metric and whether it entered the statistics (with its cell)."""
    if tables.factors:
        return _per_cell(tables, lambda part: run_values_table(tables=part, options=options))
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["run_id"]), tables.experiment)
    return with_trace(_statistics_call(run_summaries, tables, options), tables.experiment)


def robustness_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per (activation, kind, strength) of the evaluation block (inside each cell with factors): mean test
    accuracy under the perturbation over the seeds, its CI and verdict against the baseline, and the activation's
    generalisation gap."""
    if tables.factors:
        return _per_cell(tables, lambda part: robustness_table(tables=part, options=options))
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=list(ROBUSTNESS_SUMMARY_COLUMNS)), tables.experiment)
    try:
        frame = summarise_robustness(tables.robustness, metrics=tables.metrics, runs=tables.runs, options=options)
    except StatisticsError as error:
        raise _invalid_option(error) from None
    return with_trace(frame, tables.experiment)


def has_evaluation(tables: ExperimentTables) -> bool:
    """Whether the experiment's spec asks for robustness (an evaluation block, spec version 2)."""
    return tables.spec is not None and tables.spec.evaluation is not None


def robustness_image(*, tables: ExperimentTables, image_format: str, options: ResultOptions) -> bytes:
    """Accuracy against strength per kind of the evaluation block, with seed bands, as PNG or SVG bytes."""
    summary = robustness_table(tables=tables, options=options)
    reason = "" if has_evaluation(tables) else "this experiment's spec has no evaluation block"
    return robustness_plot(
        summary,
        image_format=image_format,
        title=tables.experiment.name,
        chance=chance_accuracy(classes=tables.classes),
        empty_reason=reason,
    )


def diagnostics_table(*, tables: ExperimentTables) -> pd.DataFrame:
    """One row per activation (per cell and activation with factors): gradient-norm ratios and flags, dead and
    saturated fractions, learned parameters."""
    if tables.factors:
        return _per_cell(tables, lambda part: diagnostics_table(tables=part))
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation"]), tables.experiment)
    layers = tables.layers if not tables.layers.empty else pd.DataFrame(columns=list(repository.LAYER_COLUMNS))
    return with_trace(summarise_diagnostics(layers, runs=tables.runs), tables.experiment)


@dataclass(frozen=True)
class Recommendation:
    """The plain-language findings, the best choices, what did not train, and the pairwise correction used."""

    sentences: list[str]
    best_choices: list[str]
    not_trained: list[str]
    correction: str


def _final_accuracy(tables: ExperimentTables, options: ResultOptions) -> dict[str, float]:
    accuracy_options = ResultOptions(
        metric="test_accuracy",
        summary="final",
        resamples=options.resamples,
        random_seed=options.random_seed,
        include_diverged=options.include_diverged,
    )
    summary = summarise_activations(tables.metrics, options=accuracy_options, runs=tables.runs)
    return {str(label): float(value) for label, value in zip(summary["activation"], summary["mean"], strict=True)}


def recommendation(
    *,
    tables: ExperimentTables,
    options: ResultOptions,
    summary: pd.DataFrame | None = None,
    pairs: pd.DataFrame | None = None,
    diagnostics: pd.DataFrame | None = None,
    chance_margin: float = DEFAULT_CHANCE_MARGIN,
) -> Recommendation:
    """Findings built from the measured numbers only (see app.results.recommendation.recommend)."""
    if tables.runs.empty or trained_epochs(tables.metrics).empty:
        return Recommendation(["No epoch has finished yet, so there is nothing to compare."], [], [], "")
    summary = summary if summary is not None else summary_table(tables=tables, options=options)
    pairs = pairs if pairs is not None else pairs_table(tables=tables, options=options)
    diagnostics = diagnostics if diagnostics is not None else diagnostics_table(tables=tables)
    inputs = RecommendationInputs(
        summary=summary,
        pairs=pairs,
        diagnostics=diagnostics,
        final_accuracy=_final_accuracy(tables, options),
        classes=tables.classes,
        alpha=options.alpha,
        chance_margin=chance_margin,
        setup=TrainingSetup.from_spec(tables.spec),
        experiment_id=str(tables.experiment.id),
    )
    not_trained = untrained(inputs)
    stated = pairs["correction"].dropna() if "correction" in pairs.columns else pd.Series(dtype=object)
    return Recommendation(
        sentences=recommend(inputs),
        best_choices=best_choices(summary, pairs, excluded=set(not_trained)),
        not_trained=sorted(not_trained, key=list(summary["activation"]).index),
        correction=str(stated.iloc[0]) if len(stated) else "",
    )


def gallery_image(*, tables: ExperimentTables, image_format: str, activation: str | None = None) -> bytes:
    """f(x) and f'(x) of every activation of the experiment (or only the one labelled ``activation``), learned ones
    per layer, as PNG or SVG bytes; a 422 naming ``activation`` when the experiment has no such label."""
    activations = tables.activations
    title = tables.experiment.name
    if activation is not None:
        if activation not in activations:
            allowed = ", ".join(activations) or "none"
            raise InvalidInputError(
                [
                    {
                        "loc": "query.activation",
                        "msg": f"activation must be a label of this experiment ({allowed}); got {activation!r}",
                        "type": "enum",
                    }
                ]
            )
        activations = {activation: activations[activation]}
        title = activation
    learned = learned_parameters_by_layer(tables.layers) if not tables.layers.empty else None
    return gallery.gallery_image(activations, image_format=image_format, learned_by_layer=learned, title=title)


def plot_image(*, tables: ExperimentTables, kind: str, image_format: str, options: ResultOptions) -> bytes:
    """One plot of the experiment as PNG or SVG bytes."""
    summary = pd.DataFrame(columns=["n"])
    run_values = None
    if kind == "final-metric" and not tables.runs.empty:
        summary = _statistics_call(summarise_activations, tables, options)
        run_values = _statistics_call(run_summaries, tables, options)
    learned = None
    if kind == "learned-functions" and not tables.layers.empty:
        learned = learned_parameters_by_layer(tables.layers)
    data = PlotData(
        metrics=tables.metrics,
        layer_metrics=tables.layers,
        summary=summary,
        activations=tables.activations,
        learned_by_layer=learned,
        run_values=run_values,
        title=tables.experiment.name,
        chance=chance_accuracy(classes=tables.classes),
    )
    try:
        return plot(kind, data=data, image_format=image_format)
    except ValueError as error:
        raise InvalidInputError([{"loc": "path.plot", "msg": str(error), "type": "enum"}]) from None


def learning_curves_table(*, tables: ExperimentTables) -> pd.DataFrame:
    """Per (metric, activation, epoch) of the learning curves: n, the cross-seed mean and its bootstrap band."""
    frames = [
        learning_curves(tables.metrics, metric=metric, resamples=CURVE_RESAMPLES).assign(metric=metric)
        for metric in CURVE_METRICS
        if not tables.metrics.empty and metric in tables.metrics.columns
    ]
    columns = ["metric", "activation", "activation_index", "epoch", "n", "mean", "ci_low", "ci_high"]
    frame = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    return with_trace(frame, tables.experiment)


def gradient_flow_table(
    *, tables: ExperimentTables, view: str, metric: str = "grad_norm", epoch: int | None = None
) -> pd.DataFrame:
    """The gradient-flow map (view heatmap) or the per-layer profile of one metric at one epoch (view profile)."""
    try:
        if view == "heatmap":
            frame = gradient_flow.gradient_heatmap(tables.layers)
        else:
            frame = gradient_flow.layer_profile(tables.layers, metric=metric, epoch=epoch)
    except StatisticsError as error:
        raise _invalid_option(error) from None
    return with_trace(frame, tables.experiment)


def gradient_flow_image(
    *, tables: ExperimentTables, kind: str, image_format: str, metric: str = "grad_norm", epoch: int | None = None
) -> bytes:
    """A gradient-flow plot (gradient-heatmap or layer-profile) as PNG or SVG bytes."""
    try:
        return gradient_flow_plots.gradient_flow_image(
            kind,
            layers=tables.layers,
            image_format=image_format,
            metric=metric,
            epoch=epoch,
            title=tables.experiment.name,
        )
    except StatisticsError as error:
        raise _invalid_option(error) from None
