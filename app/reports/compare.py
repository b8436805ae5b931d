"""View data of the comparison page (/compare?experiments=A,B): the experiments, the overlaid curves, the table.

The numbers are app.compare.service's (the same as GET /v1/compare); this module only formats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.orm import Session

from app.compare import service as compare_service
from app.compare.plots import line_style_name
from app.reports.service import ReportTable, format_number
from app.results.colours import colour_of
from app.results.statistics import METRIC_COLUMNS, SUMMARY_KINDS, ResultOptions


@dataclass(frozen=True)
class ComparedColumn:
    """One experiment of the page: its id, name, dataset, line style and report link."""

    id: str
    name: str
    dataset: str
    status: str
    line_style: str
    report_url: str
    gallery_url: str


@dataclass
class ComparePage:
    """Everything the comparison page shows."""

    experiments: list[ComparedColumn]
    options: ResultOptions
    experiments_text: str
    table: ReportTable
    colours: list[str]
    correction: str
    plot: tuple[str, str, str]
    downloads: list[tuple[str, str]]
    metric_choices: tuple[str, ...] = METRIC_COLUMNS
    summary_choices: tuple[str, ...] = SUMMARY_KINDS


def _interval(low: Any, high: Any) -> str:
    if format_number(low) == "" or format_number(high) == "":
        return ""
    return f"{format_number(low)} to {format_number(high)}"


def compare_page(*, session: Session, experiments: str, options: ResultOptions, limit: int) -> ComparePage:
    """The comparison page of ``experiments=A,B,...``: the API's 404 and 422 when they cannot be compared."""
    found = compare_service.comparison(session=session, experiments=experiments, options=options, limit=limit)
    text = ",".join(str(experiment.id) for experiment in found.experiments)
    names = {str(experiment.id): experiment.name for experiment in found.experiments}
    columns = [
        ComparedColumn(
            id=str(experiment.id),
            name=experiment.name,
            dataset=experiment.dataset,
            status=str(experiment.tables.experiment.status),
            line_style=line_style_name(position),
            report_url=f"/experiments/{experiment.id}",
            gallery_url=f"/experiments/{experiment.id}/gallery",
        )
        for position, experiment in enumerate(found.experiments)
    ]
    headers = [
        *(["cell"] if found.factorial else []),
        "activation",
        "experiment",
        "n",
        "mean",
        "95% CI",
        "difference of means",
        "paired seeds",
        "paired difference",
        "95% CI of the paired difference",
        "P(beats the reference on a seed)",
        "test",
        "p (Holm)",
        "p equivalence (Holm)",
        "verdict",
    ]
    rows, classes, colours = [], [], []
    for record in found.table.to_dict("records"):
        cells = [
            *([str(record["cell"])] if found.factorial else []),
            str(record["activation"]),
            names[str(record["experiment_id"])],
            format_number(record["n"]),
            format_number(record["mean"]),
            _interval(record["ci_low"], record["ci_high"]),
            format_number(record["difference_of_means"]),
            format_number(record["paired_n"]),
            format_number(record["mean_difference"]),
            _interval(record["difference_ci_low"], record["difference_ci_high"]),
            format_number(record["probability_outperforms"]),
            format_number(record["test"]),
            format_number(record["p_holm"]),
            format_number(record["p_equivalence_holm"]),
            str(record["verdict"]),
        ]
        rows.append(cells)
        classes.append([""] * (len(cells) - 1) + [f"verdict-{record['verdict']}"])
        colours.append(colour_of(str(record["activation"])))
    query = urlencode(
        {"experiments": text, "metric": options.metric, "summary": options.summary, "k": options.k}
        | ({"include_diverged": "true"} if options.include_diverged else {})
    )
    table_query = urlencode(
        {"experiments": text, "metric": options.metric, "summary": options.summary, "k": options.k}
        | {"alpha": options.alpha}
        | ({"equivalence_margin": options.equivalence_margin} if options.equivalence_margin is not None else {})
        | ({"include_diverged": "true"} if options.include_diverged else {})
    )
    return ComparePage(
        experiments=columns,
        options=options,
        experiments_text=text,
        table=ReportTable(headers, rows, classes),
        colours=colours,
        correction=found.correction,
        plot=(
            f"{options.metric} per epoch: one colour per activation, one line style per experiment",
            f"/v1/compare/plots/learning-curves.svg?{query}",
            f"/v1/compare/plots/learning-curves.png?{query}",
        ),
        downloads=[
            ("comparison (CSV)", f"/v1/compare?format=csv&{table_query}"),
            ("comparison (JSON)", f"/v1/compare?format=json&{table_query}"),
            ("comparison (Parquet)", f"/v1/compare?format=parquet&{table_query}"),
        ],
    )
