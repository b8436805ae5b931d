"""HTTP endpoints of the metric tables, streamed as JSON or CSV."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.types import DecoratedCallable
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from app.auth.schemas import Principal
from app.dependencies import PrincipalDependency, SessionFactoryDependency, get_app_settings, stream_limits
from app.metrics import service
from app.metrics.repository import MetricFilters
from app.metrics.schemas import EpochMetricRow, LayerMetricRow, RobustnessRow
from app.metrics.service import MEDIA_TYPES, MetricTable, OutputFormat
from app.schemas import MessageResponse, NoNulText, ValidationErrorResponse
from app.spec_evaluation import RobustnessKind
from app.streaming import AdmittedStreamingResponse, stream_refused_response

router = APIRouter(prefix="/v1/experiments", tags=["metrics"])

FACTOR_QUERY = "factor."


class _RunQuery(BaseModel):
    """The query of every metric table: its format and which runs (the filters of app.metrics.repository)."""

    output_format: OutputFormat = Field(
        "json", alias="format", description="json (an array of objects), csv or parquet."
    )
    activation: NoNulText | None = Field(None, max_length=200, description="Only this activation label.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Only this seed.")
    run_id: uuid.UUID | None = Field(None, description="Only this run.")

    def filters(self) -> MetricFilters:
        return MetricFilters(**self.model_dump(exclude={"output_format"}))


class _EpochQuery(_RunQuery):
    epoch_min: int | None = Field(None, ge=0, le=1_000_000, description="First epoch to include.")
    epoch_max: int | None = Field(None, ge=0, le=1_000_000, description="Last epoch to include.")


class _LayerQuery(_EpochQuery):
    layer: int | None = Field(None, ge=0, le=10_000, description="Only this layer.")


class _RobustnessQuery(_RunQuery):
    kind: RobustnessKind | None = Field(None, description="Only this kind: noise, fgsm or pgd.")


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


def _table_route(
    path: str, row_model: type[Any], *, summary: str, description: str
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of a metric table: streamed, its rows' model, the common responses and the factor.<path> filters."""
    return router.get(
        path,
        response_class=StreamingResponse,
        summary=summary,
        description=description,
        responses=_responses(row_model),
        openapi_extra={"x-query-prefixes": [FACTOR_QUERY]},
    )


@dataclass(frozen=True)
class _Download:
    """What streaming a table needs besides its query: the request (its factor.<path> parameters and the download
    limit), the session factory and the viewer."""

    request: Request
    session_factory: sessionmaker[Session]
    principal: Principal


def _download(request: Request, session_factory: SessionFactoryDependency, principal: PrincipalDependency) -> _Download:
    return _Download(request, session_factory, principal)


DownloadDependency = Annotated[_Download, Depends(_download)]


def _stream(download: _Download, experiment_id: uuid.UUID, table: MetricTable, query: _RunQuery) -> StreamingResponse:
    """The table streamed in the query's format, the rows its filters and ``factor.<path>`` parameters select."""
    # ?factor.<path>=<level> (any number, one per path): only the runs of the cells at those levels.
    factor_levels = tuple(
        (key[len(FACTOR_QUERY) :], value)
        for key, value in download.request.query_params.items()
        if key.startswith(FACTOR_QUERY)
    )
    filters = dataclasses.replace(query.filters(), factor_levels=factor_levels)
    output_format = query.output_format
    # Admitted (or 503 with Retry-After) before any connection is taken; one session for checks and rows.
    permit = stream_limits(download.request).downloads.admit()
    settings = get_app_settings(download.request)
    try:
        chunks = service.stream_metric_table(
            session_factory=download.session_factory,
            experiment_id=experiment_id,
            filters=filters,
            table=table,
            output_format=output_format,
            viewer=download.principal,
            batch_rows=None if output_format == "json" else settings.export_batch_rows,
            rows_per_group=settings.parquet_row_group_rows,
        )
    except BaseException:
        permit.release()
        raise
    name = {"epoch": "metrics", "layer": "layer-metrics", "robustness": "robustness"}[table]
    headers = {"Content-Disposition": f'inline; filename="{experiment_id}-{name}.{output_format}"'}
    return AdmittedStreamingResponse(chunks, permit=permit, media_type=MEDIA_TYPES[output_format], headers=headers)


@_table_route(
    "/{experiment_id}/metrics",
    EpochMetricRow,
    summary="Per-epoch metrics",
    description="One row per (run, epoch), ordered by activation (as in the spec), seed and epoch. "
    "`format=csv` loads with `pandas.read_csv(url)` as it is (floats in their shortest exact text; on PostgreSQL "
    "in the server's layout, e.g. `Infinity` for `inf`, `1e+15` for `1000000000000000.0`: the same values), `format=parquet` with "
    "`pandas.read_parquet` (one row group per `ACTLAB_PARQUET_ROW_GROUP_ROWS` rows, 20,000 by default; measurements "
    "as 64-bit floats, NaN where not finite; factor columns as text). The table streams from the database. A factorial "
    "experiment adds a column per factor path; `factor.<path>=<level>` (e.g. `factor.training.init=auto`, "
    "`factor.model.hidden=[16,16]`) keeps the runs of the cells at that level.",
)
def epoch_metrics(
    experiment_id: uuid.UUID,
    download: DownloadDependency,
    query: Annotated[_EpochQuery, Query()],
) -> StreamingResponse:
    """The per-epoch metric table."""
    return _stream(download, experiment_id, "epoch", query)


@_table_route(
    "/{experiment_id}/layer-metrics",
    LayerMetricRow,
    summary="Per-layer diagnostics",
    description="One row per (run, epoch, layer), ordered by activation, seed, epoch and layer: gradient and "
    "weight norms, activation statistics, dead and saturated fractions, learned activation parameters.",
)
def layer_metrics(
    experiment_id: uuid.UUID,
    download: DownloadDependency,
    query: Annotated[_LayerQuery, Query()],
) -> StreamingResponse:
    """The per-layer metric table."""
    return _stream(download, experiment_id, "layer", query)


@_table_route(
    "/{experiment_id}/robustness",
    RobustnessRow,
    summary="Robustness of the trained runs",
    description="One row per (run, kind, strength) of the spec's evaluation block (version 2), ordered by "
    "activation, seed, kind and strength: the test accuracy (and loss) of each succeeded run after its last epoch "
    "under additive Gaussian input noise (`noise`, strength = std), FGSM and PGD (`fgsm`, `pgd`, strength = "
    "epsilon), in standardised input units. Empty for an experiment without an evaluation block or before its "
    "runs end. Formats, factor columns and `factor.<path>=<level>` filters as in the metric table.",
)
def robustness(
    experiment_id: uuid.UUID,
    download: DownloadDependency,
    query: Annotated[_RobustnessQuery, Query()],
) -> StreamingResponse:
    """The robustness table."""
    return _stream(download, experiment_id, "robustness", query)
