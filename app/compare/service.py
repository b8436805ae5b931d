"""Rules of comparing experiments: which may be compared, how their activations align, and the differences.

Two or more experiments of the caller (the first is the reference) are compared on one metric and per-run
summary. They must be trained on the same dataset (the whole dataset block: name, parameters, transforms,
and any ``dataset.*`` factor) and must have recorded the metric; otherwise a 422 says which differ.
Activations align by label, and, in experiments with factors, by cell label too. For each aligned
activation and experiment: the cross-seed statistics of the results view (app.results.service.summary_table:
n, mean, std, 95% bootstrap interval). For each experiment but the reference: the difference of the means,
and, over the seeds both experiments ran (the same seed gives the same data split and order for the same
dataset), the paired comparison of the results view (app.results.statistics.paired_comparison, the same
tests, intervals and TOST) with Holm over every comparison with the reference, and its verdict.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from app.results import comparisons, verdicts
from app.results import service as results_service
from app.results.statistics import (
    MEASURE_COLUMNS,
    SEED_STATISTIC_COLUMNS,
    ResultOptions,
    paired_comparison,
    trained_epochs,
)
from app.service_errors import InvalidInputError

EXPERIMENTS_FIELD = "query.experiments"
REFERENCE_VERDICT = "reference"
# Per (cell, activation, experiment): which experiment and what it measured.
MEASURED_COLUMNS: tuple[str, ...] = (
    "activation",
    "experiment_id",
    "experiment_name",
    "spec_hash",
    "experiment_status",
    "reference_experiment_id",
    "dataset",
    *MEASURE_COLUMNS,
    *SEED_STATISTIC_COLUMNS,
    "seeds",
    "run_ids",
    "difference_of_means",
    "paired_seeds",
)
COMPARE_COLUMNS: tuple[str, ...] = (*MEASURED_COLUMNS, *comparisons.COMPARISON_COLUMNS, "verdict")


def _invalid(message: str, *, loc: str = EXPERIMENTS_FIELD, error_type: str = "value_error") -> InvalidInputError:
    return InvalidInputError([{"loc": loc, "msg": message, "type": error_type}])


def parse_experiment_ids(text: str, *, limit: int) -> list[uuid.UUID]:
    """The experiment ids of ``experiments=A,B,...``: 2 to ``limit`` distinct UUIDs, else a 422 naming the field."""
    parts = [part.strip() for part in text.split(",")]
    ids: list[uuid.UUID] = []
    for part in parts:
        try:
            ids.append(uuid.UUID(part))
        except ValueError:
            raise _invalid(
                f"experiments must be 2 to {limit} experiment ids (UUIDs) separated by commas; {part!r} is not one"
            ) from None
    if len(ids) < 2:
        raise _invalid(f"experiments must name at least 2 experiments, separated by commas; got {len(ids)}")
    if len(ids) > limit:
        raise _invalid(
            f"experiments may name at most {limit} experiments (setting ACTLAB_MAX_COMPARE_EXPERIMENTS); got {len(ids)}"
        )
    repeated = sorted({str(value) for value in ids if ids.count(value) > 1})
    if repeated:
        raise _invalid(f"experiments must be distinct; named more than once: {', '.join(repeated)}")
    return ids


@dataclass(frozen=True)
class ComparedExperiment:
    """One experiment of a comparison: its tables and the dataset it was trained on."""

    tables: results_service.ExperimentTables
    dataset: str

    @property
    def id(self) -> uuid.UUID:
        """The experiment's id."""
        return self.tables.experiment.id

    @property
    def name(self) -> str:
        """The experiment's name."""
        return self.tables.experiment.name


@dataclass(frozen=True)
class Comparison:
    """The compared experiments (reference first), the options, the aligned table and its correction."""

    experiments: list[ComparedExperiment]
    options: ResultOptions
    table: pd.DataFrame
    correction: str
    factorial: bool


def dataset_text(tables: results_service.ExperimentTables) -> str:
    """The dataset an experiment trains on, as comparable text: name, parameters, transforms, dataset factors."""
    spec = tables.spec
    if spec is None:
        return "unknown (the stored spec no longer parses)"
    block = spec.dataset.model_dump(mode="json", exclude_none=True)
    parts = [str(block.pop("name"))]
    params = spec.dataset.resolved_params()
    if params:
        parts.append(", ".join(f"{name} {value}" for name, value in sorted(params.items())))
    if block.get("transforms"):
        parts.append("transforms " + json.dumps(block["transforms"], sort_keys=True))
    for path, levels in tables.factors.items():
        if path.startswith("dataset"):
            parts.append(f"factor {path} = {json.dumps(levels, sort_keys=True)}")
    return "; ".join(parts)


def _label(experiment: ComparedExperiment) -> str:
    return f"{experiment.id} ({experiment.name})"


def _check_comparable(experiments: list[ComparedExperiment], options: ResultOptions) -> None:
    """422 when the datasets differ or an experiment has trained epochs but none recorded the metric."""
    if len({experiment.dataset for experiment in experiments}) > 1:
        uses = "; ".join(f"{_label(experiment)} uses {experiment.dataset}" for experiment in experiments)
        raise _invalid(
            f"the experiments differ in their dataset, so their metrics cannot be compared: {uses}",
            error_type="dataset_mismatch",
        )
    lacking = []
    for experiment in experiments:
        trained = trained_epochs(experiment.tables.metrics)
        if not trained.empty and (
            options.metric not in trained.columns or pd.to_numeric(trained[options.metric]).isna().all()
        ):
            lacking.append(_label(experiment))
    if lacking:
        raise _invalid(
            f"metric {options.metric} was not recorded by {', '.join(lacking)}; compare on a metric every experiment "
            "records (val_* needs training.validation_fraction above 0)",
            loc="query.metric",
            error_type="metric_mismatch",
        )


def load_experiments(*, session: Session, experiment_ids: list[uuid.UUID]) -> list[ComparedExperiment]:
    """The named experiments the caller may see, in the order named; NotFoundError for any other."""
    found = []
    for experiment_id in experiment_ids:
        tables = results_service.load_tables(session=session, experiment_id=experiment_id)
        found.append(ComparedExperiment(tables=tables, dataset=dataset_text(tables)))
    return found


def _per_run(tables: results_service.ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    runs = results_service.run_values_table(tables=tables, options=options)
    if "cell" not in runs.columns:
        runs = runs.assign(cell="")
    return runs[runs["included"].astype(bool)] if "included" in runs.columns else runs.iloc[0:0]


def _summaries(tables: results_service.ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    summary = results_service.summary_table(tables=tables, options=options)
    if "cell" not in summary.columns:
        summary = summary.assign(cell="")
    return summary


def _seed_values(runs: pd.DataFrame, cell: str, activation: str) -> dict[int, float]:
    if runs.empty:
        return {}
    chosen = runs[(runs["cell"] == cell) & (runs["activation"] == activation)]
    return dict(zip(chosen["seed"].astype(int), chosen["value"].astype(float), strict=True))


def _number(value: Any) -> float | None:
    return float(value) if value is not None and not pd.isna(value) and math.isfinite(float(value)) else None


def compare(*, experiments: list[ComparedExperiment], options: ResultOptions) -> Comparison:
    """The aligned table of comparable experiments (from ``comparable_experiments``; the first is the reference)."""
    reference = experiments[0]
    factorial = any(experiment.tables.factors for experiment in experiments)
    summaries = [_summaries(experiment.tables, options) for experiment in experiments]
    per_run = [_per_run(experiment.tables, options) for experiment in experiments]
    keys: dict[tuple[str, str], None] = {}
    for summary in summaries:
        for cell, activation in zip(summary["cell"], summary["activation"], strict=True):
            keys[(str(cell), str(activation))] = None
    reference_rows = {
        (str(record["cell"]), str(record["activation"])): record for record in summaries[0].to_dict("records")
    }
    rows: list[dict[str, Any]] = []
    compared: list[dict[str, Any]] = []
    for cell, activation in keys:
        reference_record = reference_rows.get((cell, activation))
        reference_values = _seed_values(per_run[0], cell, activation)
        for position, (experiment, summary) in enumerate(zip(experiments, summaries, strict=True)):
            match = summary[(summary["cell"] == cell) & (summary["activation"] == activation)]
            if match.empty:
                continue
            record = match.iloc[0].to_dict()
            row: dict[str, Any] = {
                "cell": cell,
                "activation": activation,
                "experiment_id": str(experiment.id),
                "experiment_name": experiment.name,
                "spec_hash": experiment.tables.experiment.spec_hash,
                "experiment_status": str(experiment.tables.experiment.status),
                "reference_experiment_id": str(reference.id),
                "dataset": experiment.dataset,
                "metric": options.metric,
                "summary": options.summary_label,
                "lower_is_better": options.lower_is_better,
                **{column: record.get(column) for column in ("n", "mean", "std", "ci_low", "ci_high")},
                "seeds": record.get("seeds", ""),
                "run_ids": record.get("run_ids", ""),
            }
            if position == 0:
                row.update(dict.fromkeys(comparisons.COMPARISON_COLUMNS), verdict=REFERENCE_VERDICT)
                row.update(difference_of_means=None, paired_seeds="")
            else:
                mean, reference_mean = _number(record.get("mean")), None
                if reference_record is not None:
                    reference_mean = _number(reference_record.get("mean"))
                row["difference_of_means"] = (
                    mean - reference_mean if mean is not None and reference_mean is not None else None
                )
                columns = paired_comparison(
                    _seed_values(per_run[position], cell, activation), reference_values, options
                )
                row["paired_seeds"] = columns.pop("seeds")
                row.update(columns)
                compared.append(row)
            rows.append(row)
    family = sum(1 for row in compared if row["p_value"] is not None)
    correction = verdicts.reference_family(family, reference.name)
    for row, verdict in zip(compared, comparisons.decide_family(compared, options, correction), strict=True):
        row["verdict"] = verdict
    frame = pd.DataFrame(rows, columns=[*(["cell"] if factorial else []), *COMPARE_COLUMNS])
    for column in ("n", *comparisons.INTEGER_COLUMNS):
        frame[column] = frame[column].astype("Int64")
    for column in ("mean", "std", "ci_low", "ci_high", "difference_of_means", *comparisons.FLOAT_COLUMNS):
        frame[column] = frame[column].astype(float)
    return Comparison(experiments=experiments, options=options, table=frame, correction=correction, factorial=factorial)


def comparable_experiments(
    *, session: Session, experiments: str, options: ResultOptions, limit: int
) -> list[ComparedExperiment]:
    """The experiments of ``experiments=A,B,...`` loaded for the caller; a 422 when they cannot be compared."""
    found = load_experiments(session=session, experiment_ids=parse_experiment_ids(experiments, limit=limit))
    _check_comparable(found, options)
    return found


def comparison(*, session: Session, experiments: str, options: ResultOptions, limit: int) -> Comparison:
    """Parse ``experiments``, load them for the caller, check that they are comparable and compare them."""
    found = comparable_experiments(session=session, experiments=experiments, options=options, limit=limit)
    return compare(experiments=found, options=options)
