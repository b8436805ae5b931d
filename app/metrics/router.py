"""HTTP endpoints of the metric tables, streamed as JSON or CSV."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from app.auth.schemas import Principal
from app.dependencies import PrincipalDependency, SessionFactoryDependency, stream_limits
from app.metrics import service
from app.metrics.repository import MetricFilters
from app.metrics.schemas import EpochMetricRow, LayerMetricRow, RobustnessRow
from app.metrics.service import MEDIA_TYPES, MetricTable, OutputFormat
from app.schemas import MessageResponse, NoNulText, ValidationErrorResponse
from app.spec_evaluation import RobustnessKind
from app.streaming import AdmittedStreamingResponse, stream_refused_response

router = APIRouter(prefix="/v1/experiments", tags=["metrics"])

FACTOR_QUERY = "factor."

FormatQuery = Annotated[OutputFormat, Query(alias="format", description="json (an array of objects), csv or parquet.")]
ActivationQuery = Annotated[NoNulText | None, Query(max_length=200, description="Only this activation label.")]
SeedQuery = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="Only this seed.")]
RunQuery = Annotated[uuid.UUID | None, Query(description="Only this run.")]
EpochMinQuery = Annotated[int | None, Query(ge=0, le=1_000_000, description="First epoch to include.")]
EpochMaxQuery = Annotated[int | None, Query(ge=0, le=1_000_000, description="Last epoch to include.")]


def _responses(row_model: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": list[row_model],  # type: ignore[valid-type]
            "description": "The rows; CSV has a header row and the same columns, empty cells for missing values.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        404: {"model": MessageResponse},
        422: {"model": ValidationErrorResponse},
        503: stream_refused_response("max_streaming_downloads"),
    }


def _stream(
    *,
    request: Request,
    session_factory: SessionFactoryDependency,
    experiment_id: uuid.UUID,
    filters: MetricFilters,
    table: MetricTable,
    output_format: OutputFormat,
    principal: Principal,
) -> StreamingResponse:
    # ?factor.<path>=<level> (any number, one per path): only the runs of the cells at those levels.
    factor_levels = tuple(
        (key[len(FACTOR_QUERY) :], value) for key, value in request.query_params.items() if key.startswith(FACTOR_QUERY)
    )
    filters = dataclasses.replace(filters, factor_levels=factor_levels)
    # Admitted (or 503 with Retry-After) before any connection is taken; one session for checks and rows.
    permit = stream_limits(request).downloads.admit()
    try:
        chunks = service.stream_metric_table(
            session_factory=session_factory,
            experiment_id=experiment_id,
            filters=filters,
            table=table,
            output_format=output_format,
            viewer=principal,
        )
    except BaseException:
        permit.release()
        raise
    name = {"epoch": "metrics", "layer": "layer-metrics", "robustness": "robustness"}[table]
    headers = {"Content-Disposition": f'inline; filename="{experiment_id}-{name}.{output_format}"'}
    return AdmittedStreamingResponse(chunks, permit=permit, media_type=MEDIA_TYPES[output_format], headers=headers)


@router.get(
    "/{experiment_id}/metrics",
    response_class=StreamingResponse,
    summary="Per-epoch metrics",
    description="One row per (run, epoch), ordered by activation (as in the spec), seed and epoch. "
    "`format=csv` loads with `pandas.read_csv(url)` as it is, `format=parquet` with `pandas.read_parquet` (one row "
    "group per 20,000 rows; measurements as 64-bit floats, NaN where not finite; factor columns as text). The table streams from the database. A factorial "
    "experiment adds a column per factor path; `factor.<path>=<level>` (e.g. `factor.training.init=auto`, "
    "`factor.model.hidden=[16,16]`) keeps the runs of the cells at that level.",
    responses=_responses(EpochMetricRow),
    openapi_extra={"x-query-prefixes": [FACTOR_QUERY]},
)
def epoch_metrics(
    experiment_id: uuid.UUID,
    request: Request,
    session_factory: SessionFactoryDependency,
    principal: PrincipalDependency,
    output_format: FormatQuery = "json",
    activation: ActivationQuery = None,
    seed: SeedQuery = None,
    run_id: RunQuery = None,
    epoch_min: EpochMinQuery = None,
    epoch_max: EpochMaxQuery = None,
) -> StreamingResponse:
    """The per-epoch metric table."""
    filters = MetricFilters(activation=activation, seed=seed, run_id=run_id, epoch_min=epoch_min, epoch_max=epoch_max)
    return _stream(
        request=request,
        session_factory=session_factory,
        experiment_id=experiment_id,
        filters=filters,
        table="epoch",
        output_format=output_format,
        principal=principal,
    )


@router.get(
    "/{experiment_id}/layer-metrics",
    response_class=StreamingResponse,
    summary="Per-layer diagnostics",
    description="One row per (run, epoch, layer), ordered by activation, seed, epoch and layer: gradient and "
    "weight norms, activation statistics, dead and saturated fractions, learned activation parameters.",
    responses=_responses(LayerMetricRow),
    openapi_extra={"x-query-prefixes": [FACTOR_QUERY]},
)
def layer_metrics(
    experiment_id: uuid.UUID,
    request: Request,
    session_factory: SessionFactoryDependency,
    principal: PrincipalDependency,
    output_format: FormatQuery = "json",
    activation: ActivationQuery = None,
    seed: SeedQuery = None,
    run_id: RunQuery = None,
    epoch_min: EpochMinQuery = None,
    epoch_max: EpochMaxQuery = None,
    layer: Annotated[int | None, Query(ge=0, le=10_000, description="Only this layer.")] = None,
) -> StreamingResponse:
    """The per-layer metric table."""
    filters = MetricFilters(
        activation=activation, seed=seed, run_id=run_id, epoch_min=epoch_min, epoch_max=epoch_max, layer=layer
    )
    return _stream(
        request=request,
        session_factory=session_factory,
        experiment_id=experiment_id,
        filters=filters,
        table="layer",
        output_format=output_format,
        principal=principal,
    )


@router.get(
    "/{experiment_id}/robustness",
    response_class=StreamingResponse,
    summary="Robustness of the trained runs",
    description="One row per (run, kind, strength) of the spec's evaluation block (version 2), ordered by "
    "activation, seed, kind and strength: the test accuracy (and loss) of each succeeded run after its last epoch "
    "under additive Gaussian input noise (`noise`, strength = std), FGSM and PGD (`fgsm`, `pgd`, strength = "
    "epsilon), in standardised input units. Empty for an experiment without an evaluation block or before its "
    "runs end. Formats, factor columns and `factor.<path>=<level>` filters as in the metric table.",
    responses=_responses(RobustnessRow),
    openapi_extra={"x-query-prefixes": [FACTOR_QUERY]},
)
def robustness(
    experiment_id: uuid.UUID,
    request: Request,
    session_factory: SessionFactoryDependency,
    principal: PrincipalDependency,
    output_format: FormatQuery = "json",
    activation: ActivationQuery = None,
    seed: SeedQuery = None,
    run_id: RunQuery = None,
    kind: Annotated[RobustnessKind | None, Query(description="Only this kind: noise, fgsm or pgd.")] = None,
) -> StreamingResponse:
    """The robustness table."""
    filters = MetricFilters(activation=activation, seed=seed, run_id=run_id, kind=kind)
    return _stream(
        request=request,
        session_factory=session_factory,
        experiment_id=experiment_id,
        filters=filters,
        table="robustness",
        output_format=output_format,
        principal=principal,
    )
