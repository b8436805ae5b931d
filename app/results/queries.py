"""Query parameters of the results endpoints, declared once and taken as FastAPI dependencies.

Each parameter has one declaration here (name, type, bounds, description); its default is the option's
default in ResultOptions. An endpoint names the ones it takes, in the order its API description lists
them, with ``Depends(result_query(...))``; the ones it does not take keep their defaults. The values
reach ResultOptions (and its validation, a 422 naming the parameter) only through ResultQuery.options(),
called in the endpoint, so request validation runs first, as for any other parameter.

Adding a result option: a ResultOptions field (app.results.statistics), its declaration in
QUERY_PARAMETERS, and its name in the endpoints that take it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from fastapi import Query

from app.dependencies import SettingsDependency
from app.results import service
from app.results.statistics import METRIC_COLUMNS, ResultOptions

ResultView = Literal["summary", "pairs", "runs", "ranking", "effects", "robustness"]

FormatQuery = Annotated[
    Literal["json", "csv", "parquet"],
    Query(alias="format", description="json (an array of objects), csv (header row) or parquet."),
]
MetricQuery = Annotated[
    str, Query(max_length=40, description=f"The metric to compare: one of {', '.join(METRIC_COLUMNS)}.")
]
SummaryQuery = Annotated[
    Literal["final", "best", "mean_last_k"],
    Query(description="Per run: the last epoch's value, the best epoch's value, or the mean of the last k epochs."),
]
KQuery = Annotated[int, Query(ge=1, le=10_000, description="Epochs averaged by summary=mean_last_k.")]
ThresholdQuery = Annotated[
    float | None, Query(description="epochs_to_threshold: epochs the mean curve needs to reach this value.")
]
BaselineQuery = Annotated[
    str | None, Query(max_length=200, description="Activation label to compare against (default relu, else the first).")
]
AlphaQuery = Annotated[float, Query(gt=0, lt=1, description="Significance level for the Holm-adjusted paired tests.")]
ViewQuery = Annotated[
    ResultView,
    Query(
        description="summary: one row per activation; pairs: win/loss/equivalent/inconclusive per ordered pair; "
        "runs: one row per run (each inside its cell, with a cell column, when the experiment has factors); "
        "ranking: each activation's mean rank over the cells with Friedman and Nemenyi; effects: per factor, "
        "level and activation the mean over seeds and the activation x factor ANOVA (one-cell experiments: "
        "status insufficient); robustness: per activation, kind and strength of the evaluation block the mean "
        "test accuracy under the perturbation, its CI and verdict against the baseline, and the generalisation gap."
    ),
]
IncludeDivergedQuery = Annotated[
    bool, Query(description="Count diverged runs' finite epochs in the statistics (default: left out, counted).")
]
ResamplesQuery = Annotated[int, Query(ge=100, le=100_000, description="Bootstrap resamples per interval.")]
EquivalenceMarginQuery = Annotated[
    float | None,
    Query(
        gt=0,
        le=1,
        description="Equivalence margin of the TOST: a paired difference shown inside plus or minus this is "
        "'equivalent' (default: ACTLAB_EQUIVALENCE_MARGIN for accuracy metrics, no equivalence test for losses).",
    ),
]

QUERY_PARAMETERS: dict[str, Any] = {
    "metric": MetricQuery,
    "summary": SummaryQuery,
    "k": KQuery,
    "threshold": ThresholdQuery,
    "baseline": BaselineQuery,
    "alpha": AlphaQuery,
    "view": ViewQuery,
    "include_diverged": IncludeDivergedQuery,
    "resamples": ResamplesQuery,
    "equivalence_margin": EquivalenceMarginQuery,
}


@dataclass(frozen=True)
class ResultQuery:
    """The result query of one request: the option values it gave and, for the results table, its view."""

    given: dict[str, Any]
    view: ResultView = "summary"
    # Option defaults the settings set (default_equivalence_margin, power); the given values override them.
    configured: dict[str, Any] = field(default_factory=dict)

    def options(self) -> ResultOptions:
        """ResultOptions of the given values (the others keep their defaults); a bad value is a 422 naming it."""
        return service.result_options(**{**self.configured, **self.given})


# A parameter's default is the option's default, so the API description and the statistics agree.
_DEFAULTS: dict[str, Any] = {
    **{option.name: option.default for option in fields(ResultOptions)},
    "view": ResultQuery.view,
}


def result_query(*names: str) -> Callable[..., ResultQuery]:
    """A dependency taking the named query parameters (in this order) and giving their ResultQuery."""
    unknown = [name for name in names if name not in QUERY_PARAMETERS]
    if unknown:
        raise ValueError(f"unknown result query parameters {unknown}; known: {', '.join(QUERY_PARAMETERS)}")

    def dependency(**values: Any) -> ResultQuery:
        view = values.pop("view", ResultQuery.view)
        settings = values.pop("settings")
        configured = {"default_equivalence_margin": settings.equivalence_margin, "power": settings.seeds_power}
        return ResultQuery(given=values, view=view, configured=configured)

    # FastAPI reads the parameters from the signature: these names, declarations and defaults.
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=_DEFAULTS[name], annotation=QUERY_PARAMETERS[name]
            )
            for name in names
        ]
        + [inspect.Parameter("settings", inspect.Parameter.KEYWORD_ONLY, annotation=SettingsDependency)]
    )
    return dependency
