"""View data of the report of one experiment (the dashboard: app.reports.dashboard; the data of the report's
interactive charts: app.reports.charts)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pandas as pd
from sqlalchemy.orm import Session

from app.experiments import service as experiments_service
from app.experiments.service import FINISHED_EXPERIMENT_STATUSES
from app.reports.assets import REPORT_SCRIPTS, asset_url
from app.reports.charts import GRADIENT_FLOW_PLOTS, INTERACTIVE_PLOTS, chart_config
from app.reports.progress import ProgressView, progress_view
from app.results import factorial_service
from app.results import service as results_service
from app.results.comparisons import family_disagreements
from app.results.failures import DEFAULT_CHANCE_MARGIN
from app.results.gradient_flow import gradient_heatmap
from app.results.plots import plot_kinds_with_content
from app.results.statistics import METRIC_COLUMNS, SUMMARY_KINDS, ResultOptions
from app.results.verdicts import pair_matrix
from app.schemas import as_utc
from app.spec_factors import pairing_note
from app.spec_models import ModelSpec

FINISHED = frozenset(str(status) for status in FINISHED_EXPERIMENT_STATUSES)
REFRESH_SECONDS = 5
PLOT_CAPTIONS: dict[str, str] = {
    "learning-curves": "Learning curves",
    "final-metric": "Summary metric per activation",
    "gradient-heatmap": "Gradient flow: log10 gradient norm per layer and epoch",
    "layer-profile": "Per-layer profile at one epoch",
    "gradient-norms": "Gradient norm per layer",
    "unit-health": "Dead and saturated units",
    "learned-functions": "Learned activation functions",
}


def format_number(value: Any, digits: int = 4) -> str:
    """A table cell: significant digits for floats, '' for missing values."""
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}g}"
    return str(value)


def format_time(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM:SS UTC', '' when missing."""
    moment = as_utc(value) if value is not None and value is not pd.NaT else None
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


@dataclass
class ReportTable:
    """A table ready for the template: header labels and formatted cells."""

    columns: list[str]
    rows: list[list[str]]
    classes: list[list[str]] = field(default_factory=list)
    # Tooltips of cells (the matrix: difference, interval, adjusted p-values and the correction).
    titles: list[list[str]] = field(default_factory=list)


SUMMARY_COLUMNS: dict[str, str] = {
    "rank": "rank",
    "activation": "activation",
    "n": "n",
    "mean": "mean",
    "std": "std",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "median": "median",
    "best_epoch": "best epoch",
    "epochs_to_threshold": "epochs to threshold",
    "area_under_curve": "AUC (mean over epochs)",
    "generalisation_gap": "train - test",
    "mean_epoch_seconds": "s / epoch",
    "diverged": "diverged",
    "failed": "failed",
    "cancelled": "cancelled",
    "mean_difference": "difference vs baseline",
    "probability_outperforms": "P(beats baseline on a seed)",
    "test": "test",
    "p_holm": "p (Holm)",
    "p_equivalence_holm": "p equivalence (Holm)",
    "verdict": "verdict",
    "seeds_needed": "seeds needed",
    "seeds_needed_equivalence": "seeds for equivalence",
}
DIAGNOSTIC_COLUMNS: dict[str, str] = {
    "activation": "activation",
    "gradient_ratio_first_epoch": "grad ratio, first epoch",
    "gradient_ratio_last_epoch": "grad ratio, last epoch",
    "vanishing": "vanishing",
    "exploding": "exploding",
    "dead_fraction": "dead fraction",
    "saturated_fraction": "saturated fraction",
    "dead_fraction_initial": "dead fraction at init",
    "saturated_fraction_initial": "saturated fraction at init",
    "learned_parameters": "learned parameters",
}


# The gradient through time, shown where a run has a recurrence (measured, or saying why not).
TIME_DIAGNOSTIC_COLUMNS: dict[str, str] = {
    "time_gradient_ratio_first_epoch": "grad ratio over time, first epoch",
    "time_gradient_ratio_last_epoch": "grad ratio over time, last epoch",
    "vanishing_over_time": "vanishing over time",
    "exploding_over_time": "exploding over time",
    "time_gradients": "gradient through time",
}

# Diagnostics flags a reader should not miss: a raised one is highlighted in the table.
FLAG_COLUMNS = frozenset({"vanishing", "exploding", "vanishing_over_time", "exploding_over_time"})


def training_text(run: dict[str, Any]) -> str:
    """How a run trained, for the run table: 'stacked (N runs)', or 'alone: why'; '' before it started."""
    size = run.get("stack_size")
    if run.get("training_path") == "stacked":
        return f"stacked ({int(size)} runs)" if isinstance(size, int | float) and size == size else "stacked"
    reason = run.get("stacking_reason")
    return f"alone: {reason}" if isinstance(reason, str) and reason else ""


def diagnostic_columns(diagnostics: pd.DataFrame, *, factorial: bool) -> dict[str, str]:
    """The report's diagnostics columns: the cell with factors, the time columns where a run has a recurrence."""
    columns = {"cell": "cell", **DIAGNOSTIC_COLUMNS} if factorial else dict(DIAGNOSTIC_COLUMNS)
    if "time_gradients" in diagnostics.columns and diagnostics["time_gradients"].notna().any():
        columns.update(TIME_DIAGNOSTIC_COLUMNS)
    return columns


def _cell_class(column: str, value: Any, cell: str) -> str:
    if column == "verdict":
        return f"verdict-{value}"
    return "flag-raised" if column in FLAG_COLUMNS and cell == "yes" else ""


def _table(frame: pd.DataFrame, columns: dict[str, str], *, sort: str | None = None) -> ReportTable:
    if frame.empty:
        return ReportTable(list(columns.values()), [])
    if sort is not None:
        frame = frame.sort_values([sort, "activation_index"], kind="stable", na_position="last")
    rows = []
    classes = []
    for record in frame.to_dict("records"):
        cells = []
        for column in columns:
            value = record.get(column)
            if isinstance(value, dict):
                cells.append(", ".join(f"{name} = {format_number(item, 3)}" for name, item in value.items()))
            else:
                cells.append(format_number(value))
        rows.append(cells)
        classes.append(
            [_cell_class(column, record.get(column), cell) for column, cell in zip(columns, cells, strict=True)]
        )
    return ReportTable(list(columns.values()), rows, classes)


def _summary_table(summary: pd.DataFrame, *, factorial: bool) -> ReportTable:
    """The results table, best rank first; with factors one block of rows per cell, in cell order."""
    if "rank" not in summary.columns:
        return _table(summary, {})
    if not factorial:
        return _table(summary, SUMMARY_COLUMNS, sort="rank")
    cells = {cell: position for position, cell in enumerate(dict.fromkeys(summary["cell"]))}
    ordered = summary.assign(_cell=summary["cell"].map(cells)).sort_values(
        ["_cell", "rank", "activation_index"], kind="stable", na_position="last"
    )
    return _table(ordered, {"cell": "cell", **SUMMARY_COLUMNS})


@dataclass
class Report:
    """Everything the report page shows."""

    experiment_id: uuid.UUID
    name: str
    status: str
    spec_hash: str
    created_at: str
    started_at: str
    finished_at: str
    error: str | None
    description: list[tuple[str, str]]
    progress: ProgressView
    finished: bool
    options: ResultOptions
    baseline: str | None
    summary: ReportTable
    summary_label: str
    margin: float | None
    summary_correction: str
    matrix: ReportTable
    matrix_correction: str
    disagreements: list[str]
    diagnostics: ReportTable
    sentences: list[str]
    best_choices: list[str]
    # (caption, SVG url, PNG url, kind of its interactive chart or "")
    plots: list[tuple[str, str, str, str]]
    downloads: list[tuple[str, str]]
    runs: ReportTable
    metric_choices: tuple[str, ...] = METRIC_COLUMNS
    summary_choices: tuple[str, ...] = SUMMARY_KINDS
    # Only for an experiment with factors (spec version 2): its cells, the ranking over them and its plots.
    factorial: FactorialSection | None = None
    # Only for an experiment with an evaluation block (spec version 2): the robustness table and its plot.
    robustness: RobustnessSection | None = None
    # What the interactive plots read (app/static/report-plots.js), and the scripts that draw them.
    charts: dict[str, Any] = field(default_factory=dict)
    scripts: list[str] = field(default_factory=list)


@dataclass
class FactorialSection:
    """The cells of a factorial experiment, the ranking over them, the test, and the across-cell plots."""

    cells: ReportTable
    ranking: ReportTable
    test: str
    pairing: str
    plots: list[tuple[str, str, str]]


@dataclass
class RobustnessSection:
    """Test accuracy under the evaluation block's perturbations per activation and strength, and its plot."""

    table: ReportTable
    correction: str
    # None until a run has been tested: no empty panel.
    plot: tuple[str, str, str] | None


ROBUSTNESS_COLUMNS: dict[str, str] = {
    "activation": "activation",
    "kind": "kind",
    "strength": "strength",
    "n": "n",
    "mean": "mean accuracy",
    "ci_low": "CI low",
    "ci_high": "CI high",
    "mean_difference": "difference vs baseline",
    "p_holm": "p (Holm)",
    "verdict": "verdict",
    "generalisation_gap": "generalisation gap",
}


def _robustness_section(
    tables: results_service.ExperimentTables, options: ResultOptions, base: str
) -> RobustnessSection | None:
    """The robustness section of an experiment with an evaluation block; None (no section at all) otherwise."""
    if not results_service.has_evaluation(tables):
        return None
    frame = results_service.robustness_table(tables=tables, options=options)
    columns = {"cell": "cell", **ROBUSTNESS_COLUMNS} if tables.factors else ROBUSTNESS_COLUMNS
    query = urlencode({"include_diverged": "true"} if options.include_diverged else {})
    caption = "Robustness: test accuracy against the strength of each perturbation, 95% bootstrap band over seeds"
    return RobustnessSection(
        table=_table(frame, columns),
        correction=_correction(frame),
        plot=(caption, f"{base}/plots/robustness.svg?{query}", f"{base}/plots/robustness.png?{query}")
        if len(frame)
        else None,
    )


FACTORIAL_PLOT_CAPTIONS: dict[str, str] = {
    "critical-difference": "Critical-difference diagram: mean rank over the cells (Nemenyi)",
    "interaction": "Interactions: the metric against each factor's levels, one line per activation",
}


def _ranking_test(ranking: dict[str, Any]) -> str:
    """One sentence: the omnibus test over the cells and the critical difference, or why there is none."""
    if ranking["status"] != "ok":
        return f"No ranking: {ranking['reason']}."
    if ranking["test"] == "wilcoxon":
        test = f"Wilcoxon signed-rank over the cells, p = {format_number(ranking['p_value'], 3)}"
    else:
        test = (
            f"Friedman chi-square {format_number(ranking['statistic'], 3)} (p = {format_number(ranking['p_value'], 3)}),"
            f" Iman-Davenport p = {format_number(ranking['iman_davenport_p'], 3)}"
        )
    verdict = "the activations do not all rank alike" if ranking["rejected"] else "no difference in ranks is shown"
    return (
        f"{test}: {verdict} at alpha {ranking['alpha']}; Nemenyi critical difference "
        f"{format_number(ranking['critical_difference'], 3)} over {len(ranking['cells'])} cells."
    )


def _factorial_section(
    tables: results_service.ExperimentTables, options: ResultOptions, base: str, query: str
) -> FactorialSection:
    cells = results_service.cell_tables(tables)
    found = factorial_service.ranking(tables=tables, options=options).as_dict()
    by_cell: dict[tuple[str, str], float | None] = {
        (str(row["cell"]), str(row["activation"])): row["rank"] for row in found["cell_ranks"]
    }
    order = sorted(found["activations"], key=lambda label: found["mean_ranks"].get(label) or math.inf)
    ranking = ReportTable(
        ["activation", "mean rank", *found["cells"]],
        [
            [label, format_number(found["mean_ranks"].get(label), 3)]
            + [format_number(by_cell.get((cell, label)), 3) for cell in found["cells"]]
            for label in order
        ],
    )
    cell_table = ReportTable(
        ["cell", *tables.factors, "runs"],
        [
            [cell.label, *[cell.levels.get(path, "") for path in tables.factors], str(len(cell.tables.runs))]
            for cell in cells
        ],
    )
    plots = [
        (caption, f"{base}/plots/{kind}.svg?{query}", f"{base}/plots/{kind}.png?{query}")
        for kind, caption in FACTORIAL_PLOT_CAPTIONS.items()
    ]
    pairing = pairing_note(tables.spec) if tables.spec is not None else ""
    return FactorialSection(cells=cell_table, ranking=ranking, test=_ranking_test(found), pairing=pairing, plots=plots)


def model_text(model: ModelSpec) -> str:
    """The model block in a few words: kind and shape."""
    if model.kind == "mlp":
        shape = f"MLP, hidden {model.hidden}, norm {model.norm}"
    elif model.kind == "cnn":
        shape = f"CNN, channels {model.channels}, kernel {model.kernel_sizes or model.kernel_size}"
        if model.strides is not None or model.padding is not None:
            strides = [stride for _, stride, _ in model.conv_layers()]
            shape += f", strides {strides}, padding {[padding for _, _, padding in model.conv_layers()]}"
        shape += f", pooling {model.pooling}"
    else:
        cell = f"{model.cell}, bidirectional" if model.bidirectional else model.cell
        shape = f"RNN ({cell}), hidden {model.hidden_size} x {model.layers}"
    return shape


def _description(tables: results_service.ExperimentTables) -> list[tuple[str, str]]:
    spec = tables.spec
    if spec is None:
        return []
    shape = model_text(spec.model)
    training = spec.training
    return [
        ("dataset", f"{spec.dataset.name} ({spec.dataset.classes} classes)"),
        ("model", shape),
        ("activations", ", ".join(activation.display_label for activation in spec.activations)),
        ("seeds", ", ".join(str(seed) for seed in spec.seeds)),
        (
            "training",
            f"{training.budget_text()}, {training.optimizer} lr {training.lr:g}, batch {training.batch_size}, "
            f"init {training.init}",
        ),
    ]


def _correction(frame: pd.DataFrame) -> str:
    """The one correction a view's rows state (empty before any comparison exists)."""
    if "correction" not in frame.columns:
        return ""
    stated = frame["correction"].dropna()
    return str(stated.iloc[0]) if len(stated) else ""


def _matrix_table(pairs: pd.DataFrame, labels: list[str]) -> ReportTable:
    """The pairwise outcome matrix with a tooltip per cell: effect size, adjusted p-values and the correction."""
    if pairs.empty or "outcome" not in pairs.columns:
        return ReportTable(["", *labels], [])
    matrix = pair_matrix(pairs, labels)
    details = {
        (str(record["activation"]), str(record["opponent"])): (
            f"difference {format_number(record.get('mean_difference'))} "
            f"(95% CI {format_number(record.get('difference_ci_low'))} to "
            f"{format_number(record.get('difference_ci_high'))}), "
            f"P(beats on a seed) {format_number(record.get('probability_outperforms'))}, "
            f"p (Holm) {format_number(record.get('p_holm'))}, "
            f"p equivalence (Holm) {format_number(record.get('p_equivalence_holm'))}; {record.get('correction')}"
        )
        for record in pairs.to_dict("records")
    }
    rows, classes, titles = [], [], []
    for label in labels:
        outcomes = [str(matrix.loc[label, other]) or "-" for other in labels]
        rows.append([label, *outcomes])
        classes.append(["", *[f"outcome-{outcome}" for outcome in outcomes]])
        titles.append(["", *[details.get((label, other), "") for other in labels]])
    return ReportTable(["", *labels], rows, classes, titles)


def report(
    *, session: Session, experiment_id: uuid.UUID, options: ResultOptions, chance_margin: float = DEFAULT_CHANCE_MARGIN
) -> Report:
    """The report of one experiment; NotFoundError when it does not exist."""
    tables = results_service.load_tables(session=session, experiment_id=experiment_id)
    experiment = tables.experiment
    experiment_runs = experiments_service.counts_of_runs(experiment.runs)
    progress = experiments_service.progress_from_counts(counts=experiment_runs, total_epochs=experiment.total_epochs)
    summary = results_service.summary_table(tables=tables, options=options)
    pairs = results_service.pairs_table(tables=tables, options=options)
    diagnostics = results_service.diagnostics_table(tables=tables)
    if tables.factors:
        found = factorial_service.recommendation(tables=tables, options=options, chance_margin=chance_margin)
    else:
        found = results_service.recommendation(
            tables=tables,
            options=options,
            summary=summary,
            pairs=pairs,
            diagnostics=diagnostics,
            chance_margin=chance_margin,
        )
    labels = [str(label) for label in summary["activation"]] if "activation" in summary.columns else []
    # With factors the pairs are per cell: the ranking section relates the cells instead of one matrix.
    matrix_table = _matrix_table(pairs, labels) if not tables.factors else ReportTable([], [])
    query = urlencode(
        {"metric": options.metric, "summary": options.summary, "k": options.k}
        | ({"include_diverged": "true"} if options.include_diverged else {})
    )
    base = f"/v1/experiments/{experiment_id}"
    drawn = plot_kinds_with_content(activations=tables.activations, layer_metrics=tables.layers)
    if not gradient_heatmap(tables.layers).empty:
        drawn += GRADIENT_FLOW_PLOTS
    plots = [
        (
            caption,
            f"{base}/plots/{kind}.svg{_plot_query(kind, query)}",
            f"{base}/plots/{kind}.png{_plot_query(kind, query)}",
            kind if kind in INTERACTIVE_PLOTS else "",
        )
        for kind, caption in PLOT_CAPTIONS.items()
        if kind in drawn
    ]
    results_query = urlencode(
        {"metric": options.metric, "summary": options.summary, "k": options.k, "alpha": options.alpha}
        | ({"baseline": options.baseline} if options.baseline else {})
        | ({"threshold": options.threshold} if options.threshold is not None else {})
        | ({"equivalence_margin": options.equivalence_margin} if options.equivalence_margin is not None else {})
    )
    downloads = [
        ("results (CSV)", f"{base}/results?format=csv&{results_query}"),
        ("results (Parquet)", f"{base}/results?format=parquet&{results_query}"),
        ("results (JSON)", f"{base}/results?format=json&{results_query}"),
        ("pairs (CSV)", f"{base}/results?format=csv&view=pairs&{results_query}"),
        ("diagnostics (CSV)", f"{base}/diagnostics?format=csv"),
        ("metrics per epoch (CSV)", f"{base}/metrics?format=csv"),
        ("layer metrics (CSV)", f"{base}/layer-metrics?format=csv"),
        *([("robustness (CSV)", f"{base}/robustness?format=csv")] if results_service.has_evaluation(tables) else []),
        ("archive (zip)", f"{base}/export"),
    ]
    runs_frame = tables.runs.copy()
    run_rows = [
        [
            str(record["activation"]),
            str(record["seed"]),
            str(record["status"]),
            format_number(record["epochs_completed"]),
            str(record["device"] or ""),
            format_number(record["training_seconds"]),
            training_text(record),
            str(record["error"] or ""),
        ]
        for record in runs_frame.to_dict("records")
    ]
    run_columns = ["activation", "seed", "status", "epochs", "device", "seconds", "training", "error"]
    if tables.factors:
        cell_of = dict(zip(tables.cells["run_id"], tables.cells["cell_label"], strict=True))
        run_columns = ["cell", *run_columns]
        run_rows = [
            [str(cell_of.get(run_id) or ""), *row] for run_id, row in zip(runs_frame["run_id"], run_rows, strict=True)
        ]
    baseline = str(summary["baseline"].iloc[0]) if "baseline" in summary.columns and len(summary) else None
    return Report(
        experiment_id=experiment.id,
        name=experiment.name,
        status=str(experiment.status),
        spec_hash=experiment.spec_hash,
        created_at=format_time(experiment.created_at),
        started_at=format_time(experiment.started_at),
        finished_at=format_time(experiment.finished_at),
        error=experiment.error,
        description=_description(tables),
        progress=progress_view(progress=progress, status=str(experiment.status)),
        finished=str(experiment.status) in FINISHED,
        options=options,
        baseline=baseline,
        summary=_summary_table(summary, factorial=bool(tables.factors)),
        summary_label=options.summary_label,
        margin=options.margin,
        summary_correction=_correction(summary),
        matrix=matrix_table,
        matrix_correction=_correction(pairs),
        disagreements=family_disagreements(summary, pairs)
        if "correction" in pairs.columns and not tables.factors
        else [],
        diagnostics=_table(diagnostics, diagnostic_columns(diagnostics, factorial=bool(tables.factors))),
        sentences=found.sentences,
        best_choices=found.best_choices,
        plots=plots,
        downloads=downloads,
        runs=ReportTable(run_columns, run_rows),
        factorial=_factorial_section(tables, options, base, query) if tables.factors else None,
        robustness=_robustness_section(tables, options, base),
        charts=chart_config(tables, base),
        scripts=[asset_url(name) for name in REPORT_SCRIPTS],
    )


def _plot_query(kind: str, query: str) -> str:
    """The query of a plot's URL: the result options, but for the gradient-flow plots, which take none of them."""
    return "" if kind in GRADIENT_FLOW_PLOTS else f"?{query}"
