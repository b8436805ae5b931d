"""Cross-seed statistics of an experiment: per-activation summaries, bootstrap intervals and paired tests.

numpy, scipy and pandas only (no torch), so the API process can compute results from SQL rows.

The input is a per-(run, epoch) metrics table with the columns ``run_id, activation, activation_index,
seed, epoch, status`` and the metric columns (``train_loss``, ``test_accuracy``, ...), and optionally a
per-run table (``run_id, activation, activation_index, seed, status``) so that runs without any
finished epoch (failed or cancelled before the first epoch) are still counted.

Epoch 0 (the network at initialisation, before any optimizer step) is in the table but in no statistic:
final, best, mean of the last k, area under the curve, best epoch, epochs to threshold and epoch seconds
are all over the trained epochs 1, 2, ... (``trained_epochs``). Only ``learning_curves`` starts at epoch 0,
so that a plotted curve begins where training did.

The choices made here, which the API documents as they are:

- Which runs count: only ``succeeded`` runs enter the statistics of the metric. ``diverged`` runs are
  counted in the column ``diverged`` and left out of the statistics unless ``include_diverged`` is set,
  in which case their finite epochs count like any other run's. ``failed``, ``cancelled`` and
  ``timed_out`` runs are never in the statistics but are counted in their own columns; queued and
  running runs are counted as ``unfinished``.
- Per-run value: ``final`` is the metric at the run's last epoch, ``best`` its best value over the epochs
  (the maximum, or the minimum for lower-is-better metrics: losses and epoch seconds), ``mean_last_k``
  the mean over its last ``k`` epochs (all epochs when it has fewer).
- Confidence intervals are percentile bootstrap intervals of the mean: ``resamples`` resamples drawn
  with a generator freshly seeded with ``random_seed`` for every interval, so the interval is a pure
  function of the values (the same data always gives the same interval). No interval for n < 2.
- Comparisons (app/results/verdicts.py has the rules, app/results/power.py the seeds needed): each
  activation against the baseline (one family, Holm over its comparisons) and every pair (one family,
  Holm over all pairs), paired over the seeds both share: the mean difference with its bootstrap
  interval (a description, not a decision rule), the SD of the differences, the probability of
  outperforming on a shared seed, the difference test, the TOST within ``equivalence_margin`` (default
  ``default_equivalence_margin`` for accuracy metrics, none for others unless given), the verdict
  ``better``/``worse``/``equivalent``/``inconclusive``/``insufficient`` (``win``/``loss``/... for pairs), the
  ``correction`` that produced it, and the seeds needed for 80% power (``power``).
- ``area_under_curve``: the mean of the metric over all epochs of a run (the area under the epoch-wise
  learning curve divided by the number of epochs, so it is on the metric's own scale: an accuracy of
  1 from the first epoch gives 1), averaged over the runs.
- ``generalisation_gap``: train minus test of the metric's family (accuracy or loss) at the summary
  epoch (the last epoch for ``final``, the best epoch for ``best``, the mean over the last k epochs for
  ``mean_last_k``), averaged over the runs; empty for metrics without a family (epoch_seconds).
- ``best_epoch`` and ``epochs_to_threshold`` are read off the cross-seed mean learning curve: the epoch
  at which it is best, and how many epochs it needs to first reach ``threshold`` (empty if never).
- ``mean_epoch_seconds`` averages over every recorded epoch of the activation's runs, whatever their
  status, since the cost of an epoch does not depend on how the run ended.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from app.results import comparisons, verdicts
from app.results.power import DEFAULT_POWER

SummaryKind = Literal["final", "best", "mean_last_k"]
SUMMARY_KINDS: tuple[str, ...] = ("final", "best", "mean_last_k")
METRIC_COLUMNS: tuple[str, ...] = (
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "train_loss",
    "val_accuracy",
    "val_loss",
    "epoch_seconds",
    "samples_per_second",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"train_loss", "test_loss", "val_loss", "epoch_seconds"})
MINIMUM_RESAMPLES = 100
MAXIMUM_RESAMPLES = 100_000
COUNTED_STATUSES: tuple[str, ...] = ("succeeded", "diverged", "failed", "cancelled", "timed_out")


class StatisticsError(ValueError):
    """Bad options or input; the message names the field and the allowed values, ``field`` names the option."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ResultOptions:
    """What to summarise and how; every field is a query parameter of the results endpoint."""

    metric: str = "test_accuracy"
    summary: str = "final"
    k: int = 3
    threshold: float | None = None
    baseline: str | None = None
    alpha: float = 0.05
    confidence: float = 0.95
    resamples: int = 2000
    random_seed: int = 0
    include_diverged: bool = False
    # None: default_equivalence_margin for accuracy metrics, no equivalence test for the others.
    equivalence_margin: float | None = None
    default_equivalence_margin: float = 0.01
    power: float = DEFAULT_POWER

    def __post_init__(self) -> None:
        if self.metric not in METRIC_COLUMNS:
            raise StatisticsError(
                f"metric must be one of {', '.join(METRIC_COLUMNS)}; got {self.metric!r}", field="metric"
            )
        if self.summary not in SUMMARY_KINDS:
            raise StatisticsError(
                f"summary must be one of {', '.join(SUMMARY_KINDS)}; got {self.summary!r}", field="summary"
            )
        if self.k < 1:
            raise StatisticsError(f"k must be at least 1; got {self.k}", field="k")
        if not 0.0 < self.alpha < 1.0:
            raise StatisticsError(f"alpha must be between 0 and 1 (exclusive); got {self.alpha}", field="alpha")
        if not 0.0 < self.confidence < 1.0:
            raise StatisticsError(
                f"confidence must be between 0 and 1 (exclusive); got {self.confidence}", field="confidence"
            )
        if not MINIMUM_RESAMPLES <= self.resamples <= MAXIMUM_RESAMPLES:
            raise StatisticsError(
                f"resamples must be between {MINIMUM_RESAMPLES} and {MAXIMUM_RESAMPLES}; got {self.resamples}",
                field="resamples",
            )
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise StatisticsError(f"threshold must be a finite number; got {self.threshold}", field="threshold")
        for name in ("equivalence_margin", "default_equivalence_margin"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0.0):
                raise StatisticsError(f"{name} must be a positive number; got {value}", field=name)
        if not 0.0 < self.power < 1.0:
            raise StatisticsError(f"power must be between 0 and 1 (exclusive); got {self.power}", field="power")

    @property
    def lower_is_better(self) -> bool:
        """True when smaller values of the metric are better (losses, epoch seconds)."""
        return is_lower_better(self.metric)

    @property
    def margin(self) -> float | None:
        """The equivalence margin in force: the given one, else the default for accuracy metrics, else None."""
        if self.equivalence_margin is not None:
            return self.equivalence_margin
        return self.default_equivalence_margin if metric_family(self.metric) == "accuracy" else None

    @property
    def summary_label(self) -> str:
        """The per-run summary as every view states it: final, best or mean_last_K."""
        return self.summary if self.summary != "mean_last_k" else f"mean_last_{self.k}"


def is_lower_better(metric: str) -> bool:
    """True for losses and times, where smaller is better."""
    return metric in LOWER_IS_BETTER


def metric_family(metric: str) -> str | None:
    """``accuracy`` or ``loss`` for split-prefixed metrics (test_accuracy -> accuracy), else None."""
    for prefix in ("train_", "test_", "val_"):
        if metric.startswith(prefix):
            return metric[len(prefix) :]
    return None


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, resamples: int = 2000, random_seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None for fewer than two values."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if data.size < 2:
        return None
    generator = np.random.default_rng(random_seed)
    indices = generator.integers(0, data.size, size=(resamples, data.size))
    means = data[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def trained_epochs(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of trained epochs (1, 2, ...): the table without epoch 0, the network at initialisation."""
    if "epoch" not in metrics.columns:
        return metrics
    return metrics[pd.to_numeric(metrics["epoch"], errors="coerce") > 0]


def _clean_metrics(metrics: pd.DataFrame, *, initial: bool = False) -> pd.DataFrame:
    """The metrics table checked, its metric columns as floats, sorted; without epoch 0 unless ``initial``."""
    required = {"run_id", "activation", "activation_index", "seed", "epoch", "status"}
    missing = required - set(metrics.columns)
    if missing:
        raise StatisticsError(f"the metrics table lacks the columns {', '.join(sorted(missing))}")
    table = (metrics if initial else trained_epochs(metrics)).copy()
    for column in METRIC_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["run_id"] = table["run_id"].astype(str)
    return table.sort_values(["activation_index", "seed", "epoch"], kind="stable")


def _runs_table(metrics: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    columns = ["run_id", "activation", "activation_index", "seed", "status"]
    if runs is None:
        table = metrics[columns].drop_duplicates("run_id")
    else:
        missing = set(columns) - set(runs.columns)
        if missing:
            raise StatisticsError(f"the runs table lacks the columns {', '.join(sorted(missing))}")
        table = runs[columns].copy()
        table["run_id"] = table["run_id"].astype(str)
    return table.sort_values(["activation_index", "seed"], kind="stable").reset_index(drop=True)


def _best_position(values: np.ndarray, lower_is_better: bool) -> int:
    return int(np.nanargmin(values) if lower_is_better else np.nanargmax(values))


def _rows_by_run(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each run's row positions in the table, in table order (one pass, not a DataFrame per run)."""
    codes, runs = pd.factorize(table["run_id"].to_numpy(dtype=object))
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {str(run): positions for run, positions in zip(runs, np.split(order, bounds), strict=False)}


@dataclass(frozen=True)
class _Columns:
    """The columns of a cleaned metrics table the summaries read, as arrays, and each run's rows in them."""

    values: np.ndarray
    epochs: np.ndarray
    gaps: np.ndarray
    activations: np.ndarray
    seconds: np.ndarray
    rows_of_run: dict[str, np.ndarray]

    @classmethod
    def of(cls, table: pd.DataFrame, options: ResultOptions) -> _Columns:
        """The arrays of ``table`` (from _clean_metrics) for ``options.metric``."""
        family = metric_family(options.metric)
        gaps = np.full(len(table), math.nan)
        if family is not None and f"train_{family}" in table.columns and f"test_{family}" in table.columns:
            gaps = table[f"train_{family}"].to_numpy(dtype=float) - table[f"test_{family}"].to_numpy(dtype=float)
        return cls(
            values=table[options.metric].to_numpy(dtype=float),
            epochs=table["epoch"].to_numpy(),
            gaps=gaps,
            activations=table["activation"].to_numpy(dtype=object),
            seconds=table["epoch_seconds"].to_numpy(dtype=float),
            rows_of_run=_rows_by_run(table),
        )


def _first_reaching(values: np.ndarray, threshold: float, lower_is_better: bool) -> int | None:
    """1 + the position of the first value at or beyond ``threshold`` (the epochs needed), None if none is."""
    reached = values <= threshold if lower_is_better else values >= threshold
    return int(np.argmax(reached)) + 1 if reached.any() else None


_NO_ROWS = np.empty(0, dtype=np.intp)


def _run_summary(columns: _Columns, rows: np.ndarray, options: ResultOptions) -> dict[str, Any]:
    """The per-run numbers of one run's rows: summary value, its epoch, threshold, AUC, generalisation gap."""
    values = columns.values[rows]
    finite = np.isfinite(values)
    row: dict[str, Any] = {
        "value": math.nan,
        "summary_epoch": None,
        "best_epoch": None,
        "epochs_to_threshold": None,
        "area_under_curve": math.nan,
        "generalisation_gap": math.nan,
        "epochs": len(rows),
    }
    if not finite.any():
        return row
    kept_values = values[finite]
    kept_epochs = columns.epochs[rows][finite]
    gaps = columns.gaps[rows][finite]
    best = _best_position(kept_values, options.lower_is_better)
    row["best_epoch"] = int(kept_epochs[best])
    row["area_under_curve"] = float(kept_values.mean())
    if options.threshold is not None:
        row["epochs_to_threshold"] = _first_reaching(kept_values, options.threshold, options.lower_is_better)
    if options.summary == "final":
        row["value"] = float(kept_values[-1])
        row["summary_epoch"] = int(kept_epochs[-1])
        row["generalisation_gap"] = float(gaps[-1])
    elif options.summary == "best":
        row["value"] = float(kept_values[best])
        row["summary_epoch"] = int(kept_epochs[best])
        row["generalisation_gap"] = float(gaps[best])
    else:
        row["value"] = float(kept_values[-options.k :].mean())
        row["summary_epoch"] = int(kept_epochs[-1])
        last_gaps = gaps[-options.k :]
        row["generalisation_gap"] = float(np.mean(last_gaps)) if np.isfinite(last_gaps).all() else math.nan
    return row


def included_statuses(options: ResultOptions) -> tuple[str, ...]:
    """Run statuses whose metrics enter the statistics."""
    return ("succeeded", "diverged") if options.include_diverged else ("succeeded",)


RUN_SUMMARY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "activation",
    "activation_index",
    "seed",
    "status",
    "included",
    "metric",
    "summary",
    "value",
    "summary_epoch",
    "best_epoch",
    "epochs_to_threshold",
    "area_under_curve",
    "generalisation_gap",
    "epochs",
)


def _run_summary_rows(columns: _Columns, run_table: pd.DataFrame, options: ResultOptions) -> list[dict[str, Any]]:
    """run_summaries' rows as dicts, in the run table's order."""
    counted = set(included_statuses(options))
    rows = []
    for run_id, activation, activation_index, seed, status in zip(
        run_table["run_id"].tolist(),
        run_table["activation"].tolist(),
        run_table["activation_index"].tolist(),
        run_table["seed"].tolist(),
        run_table["status"].tolist(),
        strict=True,
    ):
        summary = _run_summary(columns, columns.rows_of_run.get(str(run_id), _NO_ROWS), options)
        rows.append(
            {
                "run_id": str(run_id),
                "activation": activation,
                "activation_index": int(activation_index),
                "seed": int(seed),
                "status": status,
                "included": status in counted and math.isfinite(summary["value"]),
                "metric": options.metric,
                "summary": options.summary_label,
                **summary,
            }
        )
    return rows


def run_summaries(metrics: pd.DataFrame, *, options: ResultOptions, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: its status, whether it counts, and its summary value of the metric."""
    table = _clean_metrics(metrics)
    rows = _run_summary_rows(_Columns.of(table, options), _runs_table(table, runs), options)
    return pd.DataFrame(rows, columns=list(RUN_SUMMARY_COLUMNS))


def learning_curves(
    metrics: pd.DataFrame,
    *,
    metric: str,
    include_diverged: bool = False,
    confidence: float = 0.95,
    resamples: int = 1000,
    random_seed: int = 0,
) -> pd.DataFrame:
    """Per (activation, epoch): n, cross-seed mean and percentile-bootstrap interval of one metric.

    From epoch 0 (the network at initialisation) where the runs have it.
    """
    table = _clean_metrics(metrics, initial=True)
    if metric not in table.columns:
        raise StatisticsError(f"metric must be one of {', '.join(METRIC_COLUMNS)}; got {metric!r}", field="metric")
    statuses = ("succeeded", "diverged") if include_diverged else ("succeeded",)
    table = table[table["status"].isin(statuses) & np.isfinite(table[metric])]
    rows = []
    for (activation_index, epoch), group in table.groupby(["activation_index", "epoch"], sort=True):
        values = group[metric].to_numpy(dtype=float)
        interval = bootstrap_mean_interval(values, confidence=confidence, resamples=resamples, random_seed=random_seed)
        rows.append(
            {
                "activation": group["activation"].iloc[0],
                "activation_index": int(activation_index),
                "epoch": int(epoch),
                "n": int(values.size),
                "mean": float(values.mean()),
                "ci_low": interval[0] if interval else math.nan,
                "ci_high": interval[1] if interval else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["activation", "activation_index", "epoch", "n", "mean", "ci_low", "ci_high"])


def _mean_curve(columns: _Columns, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The runs' cross-seed mean learning curve: (epochs, means) in epoch order, epochs without a value left out."""
    if not run_ids:
        return np.empty(0), np.empty(0)
    rows = np.concatenate([columns.rows_of_run.get(run_id, _NO_ROWS) for run_id in run_ids])
    values = columns.values[rows]
    present = ~np.isnan(values)
    epochs, positions = np.unique(columns.epochs[rows], return_inverse=True)
    sums = np.bincount(positions, weights=np.where(present, values, 0.0), minlength=epochs.size)
    counts = np.bincount(positions, weights=present, minlength=epochs.size)
    measured = counts > 0
    return epochs[measured], sums[measured] / counts[measured]


def _optional_float(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def paired_comparison(first: dict[int, float], second: dict[int, float], options: ResultOptions) -> dict[str, Any]:
    """Paired comparison of first minus second over the seeds both have: every comparison column but Holm's."""
    shared = sorted(set(first) & set(second))
    differences = np.array([first[seed] - second[seed] for seed in shared], dtype=float)
    interval = bootstrap_mean_interval(
        differences, confidence=options.confidence, resamples=options.resamples, random_seed=options.random_seed
    )
    return {"seeds": ";".join(str(seed) for seed in shared), **comparisons.describe(differences, interval, options)}


def _values_by_activation(per_run: Sequence[dict[str, Any]]) -> dict[str, dict[int, float]]:
    values: dict[str, dict[int, float]] = {}
    for row in per_run:
        if row["included"]:
            values.setdefault(str(row["activation"]), {})[int(row["seed"])] = float(row["value"])
    return values


def activation_order(runs: pd.DataFrame) -> list[str]:
    """Activation labels in the spec's order."""
    ordered = runs.sort_values("activation_index", kind="stable").drop_duplicates("activation")
    return [str(label) for label in ordered["activation"]]


def choose_baseline(labels: Sequence[str], requested: str | None) -> str:
    """The requested baseline, else relu when present, else the first activation."""
    if not labels:
        raise StatisticsError("the experiment has no activations to compare")
    if requested is not None:
        if requested not in labels:
            raise StatisticsError(f"baseline must be one of {', '.join(labels)}; got {requested!r}", field="baseline")
        return requested
    return "relu" if "relu" in labels else labels[0]


# What a summary measured: the metric, how it was read off each run, and which way is better.
MEASURE_COLUMNS: tuple[str, ...] = ("metric", "summary", "lower_is_better")
# The statistics of one activation's seed values: n, mean, std and the 95% percentile-bootstrap interval.
SEED_STATISTIC_COLUMNS: tuple[str, ...] = ("n", "mean", "std", "ci_low", "ci_high")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "activation",
    "activation_index",
    *MEASURE_COLUMNS,
    *SEED_STATISTIC_COLUMNS,
    "min",
    "median",
    "max",
    "rank",
    "best_epoch",
    "threshold",
    "epochs_to_threshold",
    "seeds_reaching_threshold",
    "area_under_curve",
    "generalisation_gap",
    "mean_epoch_seconds",
    "runs",
    "succeeded",
    "diverged",
    "failed",
    "cancelled",
    "timed_out",
    "unfinished",
    "baseline",
    *comparisons.COMPARISON_COLUMNS,
    "verdict",
    "seeds",
    "run_ids",
)


def _skipping_nan_mean(values: Sequence[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return float(np.mean(present)) if present else math.nan


def summarise_activations(
    metrics: pd.DataFrame, *, options: ResultOptions, runs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per activation: cross-seed statistics, rank and the comparison with the baseline."""
    table = _clean_metrics(metrics)
    run_table = _runs_table(table, runs)
    columns = _Columns.of(table, options)
    per_run = _run_summary_rows(columns, run_table, options)
    labels = activation_order(run_table)
    baseline = choose_baseline(labels, options.baseline)
    values = _values_by_activation(per_run)
    runs_by_label: dict[str, list[dict[str, Any]]] = {}
    for run in per_run:
        runs_by_label.setdefault(str(run["activation"]), []).append(run)
    rows: list[dict[str, Any]] = []
    for label in labels:
        runs_of = runs_by_label[label]
        counted = [run for run in runs_of if run["included"]]
        numbers = np.array([run["value"] for run in counted], dtype=float)
        n = int(numbers.size)
        interval = bootstrap_mean_interval(
            numbers, confidence=options.confidence, resamples=options.resamples, random_seed=options.random_seed
        )
        curve_epochs, curve_values = _mean_curve(columns, [run["run_id"] for run in counted])
        best_epoch = None
        epochs_to_threshold = None
        if curve_values.size:
            best_epoch = int(curve_epochs[_best_position(curve_values, options.lower_is_better)])
            if options.threshold is not None:
                epochs_to_threshold = _first_reaching(curve_values, options.threshold, options.lower_is_better)
        seconds = columns.seconds[columns.activations == label]
        seconds = seconds[np.isfinite(seconds)]
        statuses = Counter(str(run["status"]) for run in runs_of)
        row: dict[str, Any] = {
            "activation": label,
            "activation_index": int(runs_of[0]["activation_index"]),
            "metric": options.metric,
            "summary": options.summary_label,
            "lower_is_better": options.lower_is_better,
            "n": n,
            "mean": float(numbers.mean()) if n else math.nan,
            "std": float(numbers.std(ddof=1)) if n >= 2 else math.nan,
            "ci_low": interval[0] if interval else math.nan,
            "ci_high": interval[1] if interval else math.nan,
            "min": float(numbers.min()) if n else math.nan,
            "median": float(np.median(numbers)) if n else math.nan,
            "max": float(numbers.max()) if n else math.nan,
            "rank": math.nan,
            "best_epoch": best_epoch,
            "threshold": options.threshold,
            "epochs_to_threshold": epochs_to_threshold,
            "seeds_reaching_threshold": (
                sum(1 for run in counted if run["epochs_to_threshold"] is not None)
                if options.threshold is not None
                else None
            ),
            "area_under_curve": _skipping_nan_mean([run["area_under_curve"] for run in counted]) if n else math.nan,
            "generalisation_gap": (
                _optional_float(_skipping_nan_mean([run["generalisation_gap"] for run in counted])) if n else None
            ),
            "mean_epoch_seconds": float(seconds.mean()) if seconds.size else math.nan,
            "runs": len(runs_of),
            **{status: statuses.get(status, 0) for status in COUNTED_STATUSES},
            "unfinished": sum(count for status, count in statuses.items() if status not in COUNTED_STATUSES),
            "baseline": baseline,
            "seeds": ";".join(str(run["seed"]) for run in counted),
            "run_ids": ";".join(run["run_id"] for run in counted),
        }
        rows.append(row)
    _add_ranks(rows, options)
    _add_baseline_comparisons(rows, values, baseline, options)
    return typed_frame(
        rows,
        SUMMARY_COLUMNS,
        integers=("best_epoch", "epochs_to_threshold", "seeds_reaching_threshold", *comparisons.INTEGER_COLUMNS),
        floats=("threshold", "generalisation_gap", "rank", *comparisons.FLOAT_COLUMNS),
    )


def typed_frame(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, integers: Sequence[str], floats: Sequence[str]
) -> pd.DataFrame:
    """The rows as a table of ``columns``: ``integers`` as nullable Int64 (None as NA), ``floats`` as float64 (None as
    NaN), the others as pandas infers them; each typed column is built once from its values, not converted after."""
    typed = set(integers) | set(floats)
    inferred = pd.DataFrame(rows, columns=[column for column in columns if column not in typed])
    built: dict[str, Any] = {}
    for column in columns:
        if column in typed:
            values = [row.get(column) for row in rows]
            array = pd.array(values, dtype="Int64") if column in integers else np.array(values, dtype=float)
            built[column] = pd.Series(array, index=inferred.index, copy=False)
        else:
            built[column] = inferred[column]
    return pd.DataFrame(built, index=inferred.index, copy=False)


def _add_ranks(rows: list[dict[str, Any]], options: ResultOptions) -> None:
    ranked = [row for row in rows if row["n"] > 0]
    if not ranked:
        return
    means = np.array([row["mean"] for row in ranked], dtype=float)
    scores = means if options.lower_is_better else -means
    for row, rank in zip(ranked, stats.rankdata(scores, method="average"), strict=True):
        row["rank"] = float(rank)


def _add_baseline_comparisons(
    rows: list[dict[str, Any]], values: dict[str, dict[int, float]], baseline: str, options: ResultOptions
) -> None:
    baseline_values = values.get(baseline, {})
    compared = [row for row in rows if row["activation"] != baseline]
    for row in compared:
        columns = paired_comparison(values.get(row["activation"], {}), baseline_values, options)
        columns.pop("seeds")
        row.update(columns)
    family = sum(1 for row in compared if row["p_value"] is not None)
    decided = comparisons.decide_family(compared, options, verdicts.baseline_family(family, baseline))
    for row, verdict in zip(compared, decided, strict=True):
        row["verdict"] = verdict
    for row in rows:
        if row["activation"] == baseline:
            row.update(dict.fromkeys(comparisons.COMPARISON_COLUMNS), verdict="baseline")


PAIR_COLUMNS: tuple[str, ...] = (
    "activation",
    "opponent",
    "activation_index",
    "opponent_index",
    "metric",
    "summary",
    "seeds",
    *comparisons.COMPARISON_COLUMNS,
    "outcome",
)


def compare_pairs(metrics: pd.DataFrame, *, options: ResultOptions, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every ordered pair of activations: paired effect sizes and tests, Holm over all unordered pairs, outcome."""
    table = _clean_metrics(metrics)
    run_table = _runs_table(table, runs)
    per_run = _run_summary_rows(_Columns.of(table, options), run_table, options)
    labels = activation_order(run_table)
    indices = dict(zip(run_table["activation"], run_table["activation_index"].astype(int), strict=False))
    values = _values_by_activation(per_run)
    unordered: list[dict[str, Any]] = []
    for position, first in enumerate(labels):
        for second in labels[position + 1 :]:
            columns = paired_comparison(values.get(first, {}), values.get(second, {}), options)
            unordered.append({"activation": first, "opponent": second, **columns})
    family = sum(1 for row in unordered if row["p_value"] is not None)
    decided = comparisons.decide_family(unordered, options, verdicts.pairwise_family(family))
    rows: list[dict[str, Any]] = []
    for row, verdict in zip(unordered, decided, strict=True):
        row["outcome"] = verdicts.PAIR_OUTCOMES[verdict]
        rows.extend([row, comparisons.mirrored(row)])
    for row in rows:
        row["activation_index"] = indices[row["activation"]]
        row["opponent_index"] = indices[row["opponent"]]
        row["metric"] = options.metric
        row["summary"] = options.summary_label
    frame = typed_frame(rows, PAIR_COLUMNS, integers=comparisons.INTEGER_COLUMNS, floats=comparisons.FLOAT_COLUMNS)
    return frame.sort_values(["activation_index", "opponent_index"], kind="stable").reset_index(drop=True)
