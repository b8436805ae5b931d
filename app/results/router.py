"""HTTP endpoints of results: statistics tables, diagnostics, recommendation, plots, archives and live events."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.dependencies import PrincipalDependency, SessionDependency, SessionFactoryDependency, SettingsDependency
from app.experiments import service as experiments_service
from app.models import ExperimentStatus
from app.results import service
from app.results.events import experiment_event_stream
from app.results.plots import IMAGE_FORMATS, PLOT_KINDS
from app.results.schemas import ImportResponse, RecommendationResponse
from app.results.statistics import METRIC_COLUMNS, ResultOptions
from app.schemas import MessageResponse, ValidationErrorResponse
from app.service_errors import InvalidInputError

router = APIRouter(prefix="/v1/experiments", tags=["results"])

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
    Literal["summary", "pairs", "runs"],
    Query(description="summary: one row per activation; pairs: win/tie/loss per ordered pair; runs: one row per run."),
]
IncludeDivergedQuery = Annotated[
    bool, Query(description="Count diverged runs' finite epochs in the statistics (default: left out, counted).")
]
ResamplesQuery = Annotated[int, Query(ge=100, le=100_000, description="Bootstrap resamples per interval.")]

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


def _table_response(content: bytes, output_format: str, experiment_id: uuid.UUID, name: str) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{experiment_id}-{name}.{output_format}"'}
    return Response(content, media_type=service.TABLE_MEDIA_TYPES[output_format], headers=headers)


def _options(
    *,
    metric: str,
    summary: str,
    k: int,
    threshold: float | None,
    baseline: str | None,
    alpha: float,
    include_diverged: bool,
    resamples: int,
) -> ResultOptions:
    return service.result_options(
        metric=metric,
        summary=summary,
        k=k,
        threshold=threshold,
        baseline=baseline,
        alpha=alpha,
        include_diverged=include_diverged,
        resamples=resamples,
    )


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
        "Each activation is compared with the baseline over the seeds both have: mean_difference with its "
        "bootstrap CI, p_value from Wilcoxon signed-rank (6 or more non-zero differences) or the paired t-test "
        "(fewer), Holm-adjusted p_holm across the family, and verdict better | worse | tied | insufficient. "
        "`view=pairs` gives every ordered pair with outcome win | tie | loss | insufficient (Holm over all "
        "pairs); `view=runs` the per-run values."
    ),
    responses=_TABLE_RESPONSES,
)
def results(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    output_format: FormatQuery = "json",
    metric: MetricQuery = "test_accuracy",
    summary: SummaryQuery = "final",
    k: KQuery = 3,
    threshold: ThresholdQuery = None,
    baseline: BaselineQuery = None,
    alpha: AlphaQuery = 0.05,
    view: ViewQuery = "summary",
    include_diverged: IncludeDivergedQuery = False,
    resamples: ResamplesQuery = 2000,
) -> Response:
    """The results table in JSON, CSV or Parquet."""
    options = _options(
        metric=metric,
        summary=summary,
        k=k,
        threshold=threshold,
        baseline=baseline,
        alpha=alpha,
        include_diverged=include_diverged,
        resamples=resamples,
    )
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    if view == "pairs":
        frame = service.pairs_table(tables=tables, options=options)
    elif view == "runs":
        frame = service.run_values_table(tables=tables, options=options)
    else:
        frame = service.summary_table(tables=tables, options=options)
    name = "results" if view == "summary" else f"results-{view}"
    return _table_response(service.encode_table(frame, output_format), output_format, experiment_id, name)


@router.get(
    "/{experiment_id}/diagnostics",
    response_class=Response,
    summary="Gradient-flow diagnostics per activation",
    description=(
        "One row per activation: the first-to-last layer gradient-norm ratio at each run's first and last "
        "epoch (geometric mean over seeds), vanishing/exploding flags (catalog thresholds), mean dead and "
        "saturated unit fractions at the last epoch, and learned parameter values of learnable activations."
    ),
    responses=_TABLE_RESPONSES,
)
def diagnostics(experiment_id: uuid.UUID, session: SessionDependency, output_format: FormatQuery = "json") -> Response:
    """The diagnostics table in JSON, CSV or Parquet."""
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    frame = service.diagnostics_table(tables=tables)
    return _table_response(service.encode_table(frame, output_format), output_format, experiment_id, "diagnostics")


@router.get(
    "/{experiment_id}/recommendation",
    response_model=RecommendationResponse,
    summary="Plain-language recommendation",
    description="Which activations are tied best, which failed to train and the measured diagnostic that "
    "explains it, and the cost per epoch; every sentence follows from the stored numbers.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
def recommendation(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    metric: MetricQuery = "test_accuracy",
    summary: SummaryQuery = "final",
    k: KQuery = 3,
    alpha: AlphaQuery = 0.05,
    include_diverged: IncludeDivergedQuery = False,
) -> RecommendationResponse:
    """The recommendation sentences."""
    options = _options(
        metric=metric,
        summary=summary,
        k=k,
        threshold=None,
        baseline=None,
        alpha=alpha,
        include_diverged=include_diverged,
        resamples=2000,
    )
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    found = service.recommendation(tables=tables, options=options)
    return RecommendationResponse(
        experiment_id=experiment_id,
        metric=options.metric,
        summary=options.summary if options.summary != "mean_last_k" else f"mean_last_{options.k}",
        alpha=options.alpha,
        tied_best=found.tied_best,
        sentences=found.sentences,
    )


@router.get(
    "/{experiment_id}/plots/{filename}",
    response_class=Response,
    summary="A plot as PNG or SVG",
    description="filename is KIND.png or KIND.svg; kinds: "
    + "; ".join(f"`{kind}`: {text}" for kind, text in PLOT_KINDS.items()),
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The image."},
        404: {"model": MessageResponse},
        422: {"model": ValidationErrorResponse},
    },
)
def plot_image(
    experiment_id: uuid.UUID,
    filename: str,
    session: SessionDependency,
    metric: MetricQuery = "test_accuracy",
    summary: SummaryQuery = "final",
    k: KQuery = 3,
    include_diverged: IncludeDivergedQuery = False,
) -> Response:
    """One plot of the experiment."""
    kind, _, image_format = filename.rpartition(".")
    errors = []
    if kind not in PLOT_KINDS:
        errors.append(
            {
                "loc": "path.filename",
                "msg": f"plot kind {kind or filename!r} is unknown; allowed: {', '.join(PLOT_KINDS)}",
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
    if errors:
        raise InvalidInputError(errors)
    options = _options(
        metric=metric,
        summary=summary,
        k=k,
        threshold=None,
        baseline=None,
        alpha=0.05,
        include_diverged=include_diverged,
        resamples=2000,
    )
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    content = service.plot_image(tables=tables, kind=kind, image_format=image_format, options=options)
    return Response(content, media_type=service.image_media_type(image_format), headers={"Cache-Control": "no-cache"})


@router.get(
    "/{experiment_id}/export",
    response_class=Response,
    summary="Archive an experiment as a zip",
    description="spec.json (the canonical spec; POST it to /v1/experiments to rerun), experiment.json, "
    "runs.csv, metrics.csv, layer_metrics.csv, results.csv and diagnostics.csv. "
    "POST /v1/experiments/import loads it back.",
    responses={200: {"content": {"application/zip": {}}}, 404: {"model": MessageResponse}},
)
def export(experiment_id: uuid.UUID, session: SessionDependency) -> Response:
    """The experiment as a zip archive."""
    tables = service.load_tables(session=session, experiment_id=experiment_id)
    content = service.export_archive(tables=tables, options=ResultOptions())
    headers = {"Content-Disposition": f'attachment; filename="{service.archive_filename(tables.experiment)}"'}
    return Response(content, media_type="application/zip", headers=headers)


@router.post(
    "/import",
    status_code=201,
    response_model=ImportResponse,
    summary="Load an exported archive as a new experiment",
    description="Send the zip from GET /v1/experiments/{id}/export as the request body (Content-Type "
    "application/zip) or as a multipart file upload. The spec is validated against the limits in force; "
    "runs keep their statuses (runs that were still queued or running are stored as cancelled); nothing is "
    "trained. A bad archive gets 422 naming the file and column.",
    responses={413: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
async def import_experiment(
    request: Request,
    session: SessionDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
    response: Response,
) -> ImportResponse:
    """Store an archive as a new experiment owned by the caller."""
    content = await _upload_bytes(request)
    outcome = await run_in_threadpool(
        lambda: service.import_archive(session=session, content=content, limits=settings, owner_id=principal.owner_id)
    )
    experiment = outcome.experiment
    base = f"/v1/experiments/{experiment.id}"
    response.headers["Location"] = base
    return ImportResponse(
        id=experiment.id,
        imported_from=outcome.imported_from,
        name=experiment.name,
        status=ExperimentStatus(experiment.status),
        spec_hash=experiment.spec_hash,
        runs=outcome.runs,
        epoch_metrics=outcome.epoch_metrics,
        layer_metrics=outcome.layer_metrics,
        links={"self": base, "results": f"{base}/results", "report": f"/experiments/{experiment.id}"},
    )


async def _upload_bytes(request: Request) -> bytes:
    """The zip from a raw body or from the first file of a multipart form."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        for value in form.values():
            if not isinstance(value, str):
                return bytes(await value.read())
        raise InvalidInputError(
            [{"loc": "body.file", "msg": "the form holds no file; attach the exported zip", "type": "missing"}]
        )
    body = await request.body()
    if not body:
        raise InvalidInputError(
            [{"loc": "body", "msg": "the request body is empty; send the exported zip", "type": "missing"}]
        )
    return body


@router.get(
    "/{experiment_id}/events",
    response_class=StreamingResponse,
    summary="Live progress as server-sent events",
    description="text/event-stream: one `epoch` event per newly stored epoch (run id, activation, seed, "
    "epoch, metrics, epochs_finished, epochs_total), one `status` event per status change of a run "
    "(scope run) or of the experiment (scope experiment), comment heartbeats, and a final `end` event "
    "once the experiment has finished. Epochs already stored are sent first.",
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": MessageResponse}},
)
def events(
    experiment_id: uuid.UUID, session: SessionDependency, session_factory: SessionFactoryDependency
) -> StreamingResponse:
    """Stream the experiment's progress until it finishes."""
    experiments_service.require_experiment(session=session, experiment_id=experiment_id)
    session.close()
    return StreamingResponse(
        experiment_event_stream(session_factory=session_factory, experiment_id=experiment_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
