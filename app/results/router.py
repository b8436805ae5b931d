"""HTTP endpoints of results: statistics tables, diagnostics, recommendation and plots.

Archives (export, import) are app.archives.router; live events app.results.events_router.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal

import pandas as pd
from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.orm import Session

from app.config import Settings
from app.dependencies import SessionDependency, SettingsDependency
from app.results import cache, factorial_service, service
from app.results.encoding import TABLE_MEDIA_TYPES, encode_table, image_media_type
from app.results.factorial_plots import FACTORIAL_PLOT_KINDS
from app.results.gradient_flow import LayerMetricName
from app.results.gradient_flow_plots import GRADIENT_FLOW_PLOT_KINDS
from app.results.plot_kinds import GALLERY_PLOT_KINDS, PLOT_KINDS
from app.results.plots import IMAGE_FORMATS
from app.results.queries import FormatQuery, ResultQuery, result_query
from app.results.robustness_plots import ROBUSTNESS_PLOT_KINDS
from app.results.schemas import RecommendationResponse
from app.results.statistics import ResultOptions
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError

router = APIRouter(prefix="/v1/experiments", tags=["results"])

ALL_PLOT_KINDS: dict[str, str] = {
    **PLOT_KINDS,
    **GRADIENT_FLOW_PLOT_KINDS,
    **FACTORIAL_PLOT_KINDS,
    **GALLERY_PLOT_KINDS,
    **ROBUSTNESS_PLOT_KINDS,
}
LayerMetricQuery = Annotated[
    LayerMetricName,
    Query(description="The layer metric of the profile: grad_norm, dead_fraction or saturated_fraction."),
]
LayerEpochQuery = Annotated[
    int | None,
    Query(
        ge=0, le=1_000_000, description="The epoch of the profile (default the last recorded; 0 = at initialisation)."
    ),
]
GradientFlowView = Annotated[
    Literal["heatmap", "profile"],
    Query(
        description="heatmap: per (activation, layer, epoch) the mean over seeds of log10 gradient norm; profile: "
        "per (activation, layer) one metric at one epoch, cross-seed mean and the seeds' range."
    ),
]
ImageFormatPath = Annotated[Literal["png", "svg"], Path(description="png or svg.")]

ResultsTableQuery = Annotated[
    ResultQuery,
    Depends(
        result_query(
            "metric",
            "summary",
            "k",
            "threshold",
            "baseline",
            "alpha",
            "view",
            "include_diverged",
            "resamples",
            "equivalence_margin",
        )
    ),
]
RecommendationQuery = Annotated[
    ResultQuery, Depends(result_query("metric", "summary", "k", "alpha", "include_diverged", "equivalence_margin"))
]
PlotQuery = Annotated[ResultQuery, Depends(result_query("metric", "summary", "k", "include_diverged"))]

_TABLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The table; every row carries experiment_id, spec_hash, timestamps, and the run ids "
        "and seeds it was computed from.",
        "content": {
            "application/json": {},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    404: {"model": MessageResponse},
    422: {"model": ValidationErrorResponse},
}
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The image."},
    404: {"model": MessageResponse},
    422: {"model": ValidationErrorResponse},
}


_RESULT_VIEWS: dict[str, Callable[..., Any]] = {
    "summary": service.summary_table,
    "pairs": service.pairs_table,
    "runs": service.run_values_table,
    "ranking": factorial_service.ranking_table,
    "effects": factorial_service.effects_table,
    "robustness": service.robustness_table,
}


def _cached(
    session: SessionDependency,
    settings: SettingsDependency,
    experiment_id: uuid.UUID,
    endpoint: str,
    output_format: str,
    options: ResultOptions | None,
    compute: Callable[[], bytes],
) -> bytes:
    """``compute()``'s bytes through the results cache, keyed on the endpoint, the format and every option."""
    parameters = {"format": output_format, **(asdict(options) if options is not None else {})}
    return cache.cached_response(
        session=session,
        experiment_id=experiment_id,
        endpoint=endpoint,
        parameters=parameters,
        compute=compute,
        max_bytes=settings.results_cache_max_bytes,
    )


def _table_response(content: bytes, output_format: str, experiment_id: uuid.UUID, name: str) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{experiment_id}-{name}.{output_format}"'}
    return Response(content, media_type=TABLE_MEDIA_TYPES[output_format], headers=headers)


def _computed_table(
    session: Session,
    settings: Settings,
    experiment_id: uuid.UUID,
    output_format: str,
    name: str,
    compute: Callable[..., pd.DataFrame],
    *,
    endpoint: str | None = None,
) -> Response:
    """The table ``compute(tables=...)`` makes of the experiment's tables, encoded as asked, through the results
    cache under ``endpoint`` (default the table's name)."""

    def encoded() -> bytes:
        frame = compute(tables=service.load_tables(session=session, experiment_id=experiment_id))
        return encode_table(frame, output_format)

    content = _cached(session, settings, experiment_id, endpoint or name, output_format, None, encoded)
    return _table_response(content, output_format, experiment_id, name)


def _table_endpoint(
    function_name: str, name: str, compute: Callable[..., pd.DataFrame], doc: str
) -> Callable[..., Response]:
    """An endpoint serving the table ``compute`` makes of the experiment's tables in JSON, CSV or Parquet, through the
    results cache (``function_name`` names the endpoint and its OpenAPI operation id)."""

    def endpoint(
        experiment_id: uuid.UUID,
        session: SessionDependency,
        settings: SettingsDependency,
        output_format: FormatQuery = "json",
    ) -> Response:
        return _computed_table(session, settings, experiment_id, output_format, name, compute)

    endpoint.__name__ = endpoint.__qualname__ = function_name
    endpoint.__doc__ = doc
    return endpoint


def _image_response(content: bytes, image_format: str) -> Response:
    return Response(content, media_type=image_media_type(image_format), headers={"Cache-Control": "no-cache"})


@router.get(
    "/{experiment_id}/results",
    response_class=Response,
    summary="Cross-seed comparison of the activations",
    description=(
        "One row per activation label: n (seeds), mean, std, 95% percentile-bootstrap CI (seeded: the same "
        "data gives the same interval), min, median, max, rank (1 = best, ties averaged), best_epoch and "
        "epochs_to_threshold (read off the cross-seed mean curve), area_under_curve (mean of the metric over "
        "epochs), generalisation_gap (train minus test), mean_epoch_seconds, and the run counts per status. "
        "Only succeeded runs count (diverged ones too with include_diverged=true); the others are counted. "
        "Each activation is compared with the baseline over the seeds both have (docs/statistics.md): "
        "mean_difference with its bootstrap CI (a description), difference_sd, probability_outperforms (share "
        "of shared seeds it wins, ties half), p_value from Wilcoxon signed-rank (6 or more non-zero "
        "differences) or the paired t-test (fewer), the TOST p_equivalence within plus or minus "
        "equivalence_margin with the 90% t-interval equivalence_ci_low/high, both Holm-adjusted (p_holm, "
        "p_equivalence_holm) over the family the column correction names, the verdict better | worse | "
        "equivalent | inconclusive | insufficient, and seeds_needed / seeds_needed_equivalence (paired seeds "
        "per activation for 80% power, noncentral t). `view=pairs` gives every ordered pair with the same "
        "columns and outcome win | loss | equivalent | inconclusive | insufficient (Holm over all pairs); "
        "`view=runs` the per-run values. Every row states its summary. With factors (spec version 2) summary, "
        "pairs and runs are computed inside each cell and carry the cell label and one column per factor path; "
        "`view=ranking` gives each activation's mean rank over the cells (rank and seed mean per cell, mean "
        "rank per level of each factor), the "
        "Friedman test with Iman-Davenport's F (Wilcoxon for two activations), Nemenyi p-values and the "
        "critical difference (Demšar 2006); `view=effects` one row per (factor, level, activation) with the "
        "mean over seeds, its bootstrap CI and the activation x factor two-way ANOVA (F, p, partial eta "
        "squared). Without factors ranking and effects answer status insufficient with the reason. "
        "`view=robustness` (an evaluation block, spec version 2): one row per activation, kind (noise, fgsm, pgd) "
        "and strength with n, mean, std and CI of the test accuracy under that perturbation, the comparison "
        "columns and verdict against the baseline (the statistics above, one Holm family per kind and strength), "
        "and the activation's generalisation_gap (train minus test accuracy at the last epoch); per cell with "
        "factors."
    ),
    responses=_TABLE_RESPONSES,
)
def results(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    settings: SettingsDependency,
    query: ResultsTableQuery,
    output_format: FormatQuery = "json",
) -> Response:
    """The results table in JSON, CSV or Parquet."""
    options = query.options()
    table = _RESULT_VIEWS[query.view]

    def compute() -> bytes:
        # No view of this table reads the layer metrics.
        tables = service.load_tables(session=session, experiment_id=experiment_id, layers=False)
        return encode_table(table(tables=tables, options=options), output_format)

    content = _cached(session, settings, experiment_id, f"results/{query.view}", output_format, options, compute)
    name = "results" if query.view == "summary" else f"results-{query.view}"
    return _table_response(content, output_format, experiment_id, name)


diagnostics = router.get(
    "/{experiment_id}/diagnostics",
    response_class=Response,
    summary="Gradient-flow diagnostics per activation",
    description=(
        "One row per activation: the first-to-last layer gradient-norm ratio at each run's first and last "
        "epoch (geometric mean over seeds), vanishing/exploding flags (catalog thresholds), mean dead and "
        "saturated unit fractions at the last epoch, and learned parameter values of learnable activations. "
        "With factors one row per (cell, activation), with the cell label and its levels."
    ),
    responses=_TABLE_RESPONSES,
)(
    _table_endpoint(
        "diagnostics", "diagnostics", service.diagnostics_table, "The diagnostics table in JSON, CSV or Parquet."
    )
)


@router.get(
    "/{experiment_id}/recommendation",
    response_model=RecommendationResponse,
    summary="Plain-language recommendation",
    description="What failed to train (at most chance plus ACTLAB_CHANCE_MARGIN, or diverged) and the measured "
    "diagnostic that explains it, remedies as spec changes, then the ranking of the activations that trained "
    "(shown better, worse, equivalent or inconclusive against the best, with the seeds that would settle it) "
    "and the cost per epoch; every sentence follows from the stored numbers. With factors it leads with how to "
    "choose per condition (the best activations in each cell, the factors that change the ranking and those "
    "that do not, for the measured cells only), then each cell's findings prefixed with the cell.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
def recommendation(
    experiment_id: uuid.UUID, session: SessionDependency, settings: SettingsDependency, query: RecommendationQuery
) -> RecommendationResponse:
    """The recommendation sentences."""
    options = query.options()
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    found = factorial_service.recommendation(tables=tables, options=options, chance_margin=settings.chance_margin)
    return RecommendationResponse(
        experiment_id=experiment_id,
        metric=options.metric,
        summary=options.summary_label,
        alpha=options.alpha,
        equivalence_margin=options.margin,
        correction=found.correction,
        best_choices=found.best_choices,
        not_trained=found.not_trained,
        sentences=found.sentences,
    )


learning_curves = router.get(
    "/{experiment_id}/learning-curves",
    response_class=Response,
    summary="Learning curves: cross-seed mean per epoch with its bootstrap band",
    description="One row per (metric, activation, epoch) for train_loss, test_loss, train_accuracy and "
    "test_accuracy: n (succeeded runs with a finite value), the cross-seed mean and its 95% percentile-bootstrap "
    "band (seeded), from epoch 0 where the runs have it. The learning-curves plot and the report draw this table.",
    responses=_TABLE_RESPONSES,
)(
    _table_endpoint(
        "learning_curves",
        "learning-curves",
        service.learning_curves_table,
        "The learning-curve table in JSON, CSV or Parquet.",
    )
)


@router.get(
    "/{experiment_id}/gradient-flow",
    response_class=Response,
    summary="Gradient flow per layer: the layer x epoch map or the per-layer profile at one epoch",
    description="Over the runs that trained (succeeded, diverged or running). `view=heatmap`: one row per "
    "(activation, layer, epoch) with n (seeds) and log10_grad_norm, the mean over seeds of log10 gradient norm. "
    "`view=profile`: one row per (activation, layer) of `metric` (grad_norm, dead_fraction, saturated_fraction) "
    "at `epoch` (default the last recorded; 0 is the network at initialisation): n, mean (geometric for "
    "grad_norm), seed_min and seed_max. An epoch without layer metrics is a 422 listing the recorded ones.",
    responses=_TABLE_RESPONSES,
)
def gradient_flow(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    settings: SettingsDependency,
    view: GradientFlowView = "heatmap",
    metric: LayerMetricQuery = "grad_norm",
    epoch: LayerEpochQuery = None,
    output_format: FormatQuery = "json",
) -> Response:
    """The gradient-flow table in JSON, CSV or Parquet."""
    return _computed_table(
        session,
        settings,
        experiment_id,
        output_format,
        f"gradient-{view}",
        lambda tables: service.gradient_flow_table(tables=tables, view=view, metric=metric, epoch=epoch),
        endpoint=f"gradient-flow/{view}/{metric}/{epoch}",
    )


# Before the route of every other plot, which would otherwise take this path with its own query parameters.
@router.get(
    "/{experiment_id}/plots/layer-profile.{image_format}",
    response_class=Response,
    summary="Per-layer profile of a layer metric at one epoch, as PNG or SVG",
    description=GRADIENT_FLOW_PLOT_KINDS["layer-profile"],
    responses=_IMAGE_RESPONSES,
)
def layer_profile_image(
    experiment_id: uuid.UUID,
    image_format: ImageFormatPath,
    session: SessionDependency,
    settings: SettingsDependency,
    metric: LayerMetricQuery = "grad_norm",
    epoch: LayerEpochQuery = None,
) -> Response:
    """The per-layer profile plot."""

    def compute() -> bytes:
        tables = service.load_tables(session=session, experiment_id=experiment_id)
        return service.gradient_flow_image(
            tables=tables, kind="layer-profile", image_format=image_format, metric=metric, epoch=epoch
        )

    endpoint = f"plots/layer-profile/{metric}/{epoch}"
    content = _cached(session, settings, experiment_id, endpoint, image_format, None, compute)
    return _image_response(content, image_format)


@router.get(
    "/{experiment_id}/plots/{filename}",
    response_class=Response,
    summary="A plot as PNG or SVG",
    description="filename is KIND.png or KIND.svg; kinds: "
    + "; ".join(f"`{kind}`: {text}" for kind, text in ALL_PLOT_KINDS.items()),
    responses=_IMAGE_RESPONSES,
)
def plot_image(
    experiment_id: uuid.UUID,
    filename: str,
    session: SessionDependency,
    settings: SettingsDependency,
    query: PlotQuery,
    activation: Annotated[
        str | None, Query(max_length=200, description="`activations` only: draw this activation label alone.")
    ] = None,
) -> Response:
    """One plot of the experiment."""
    kind, _, image_format = filename.rpartition(".")
    errors = []
    if kind not in ALL_PLOT_KINDS:
        errors.append(
            {
                "loc": "path.filename",
                "msg": f"plot kind {kind or filename!r} is unknown; allowed: {', '.join(ALL_PLOT_KINDS)}",
                "type": "enum",
            }
        )
    if image_format not in IMAGE_FORMATS:
        errors.append(
            {
                "loc": "path.filename",
                "msg": f"image format {image_format!r} is unknown; allowed: {', '.join(IMAGE_FORMATS)}",
                "type": "enum",
            }
        )
    if activation is not None and kind not in GALLERY_PLOT_KINDS:
        errors.append(
            {
                "loc": "query.activation",
                "msg": f"activation applies to the {', '.join(GALLERY_PLOT_KINDS)} plot only; got plot kind {kind!r}",
                "type": "value_error",
            }
        )
    if errors:
        raise InvalidInputError(errors)
    options = query.options()

    def compute() -> bytes:
        tables = service.load_tables(session=session, experiment_id=experiment_id)
        if kind in GALLERY_PLOT_KINDS:
            return service.gallery_image(tables=tables, image_format=image_format, activation=activation)
        if kind in ROBUSTNESS_PLOT_KINDS:
            return service.robustness_image(tables=tables, image_format=image_format, options=options)
        if kind in GRADIENT_FLOW_PLOT_KINDS:
            return service.gradient_flow_image(tables=tables, kind=kind, image_format=image_format)
        if kind in FACTORIAL_PLOT_KINDS:
            return factorial_service.plot_image(tables=tables, kind=kind, image_format=image_format, options=options)
        return service.plot_image(tables=tables, kind=kind, image_format=image_format, options=options)

    endpoint = f"plots/{kind}" + (f"/{activation}" if activation is not None else "")
    content = _cached(session, settings, experiment_id, endpoint, image_format, options, compute)
    return _image_response(content, image_format)
