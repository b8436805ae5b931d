"""Rules of the metric tables: filter checks and streamed encoding."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from app.auth.schemas import Principal
from app.config import Settings
from app.experiments import service as experiments_service
from app.metrics import export, parquet, repository
from app.metrics.repository import MetricFilters
from app.runs import repository as runs_repository
from app.service_errors import InvalidInputError
from app.spec_factors import FactorQueryError, cells_at_levels
from app.streaming import ClosingStream, json_array_chunks

OutputFormat = Literal["json", "csv", "parquet"]
MetricTable = Literal["epoch", "layer", "robustness"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": parquet.MEDIA_TYPE,
}


def check_metric_filters(
    *, session: Session, experiment_id: uuid.UUID, filters: MetricFilters, viewer: Principal | None = None
) -> None:
    """NotFoundError for an unknown (or another owner's) experiment; InvalidInputError for filters naming nothing in it."""
    experiment = experiments_service.require_experiment(session=session, experiment_id=experiment_id, viewer=viewer)
    errors = []
    if filters.factor_levels:
        try:
            cells_at_levels(experiment.spec, dict(filters.factor_levels))
        except FactorQueryError as error:
            errors.append({"loc": f"query.factor.{error.path}", "msg": str(error), "type": "enum"})
    if filters.epoch_min is not None and filters.epoch_max is not None and filters.epoch_min > filters.epoch_max:
        errors.append(
            {"loc": "query.epoch_min", "msg": "epoch_min must not be greater than epoch_max", "type": "value_error"}
        )
    if filters.activation is not None or filters.seed is not None or filters.run_id is not None:
        runs = runs_repository.list_runs_of_experiment(session=session, experiment_id=experiment_id)
        labels = list(dict.fromkeys(run.activation_label for run in runs))
        seeds = sorted({run.seed for run in runs})
        if filters.activation is not None and filters.activation not in labels:
            errors.append(
                {
                    "loc": "query.activation",
                    "msg": f"no activation labelled {filters.activation!r} in this experiment; "
                    f"allowed: {', '.join(labels)}",
                    "type": "enum",
                }
            )
        if filters.seed is not None and filters.seed not in seeds:
            errors.append(
                {
                    "loc": "query.seed",
                    "msg": f"no seed {filters.seed} in this experiment; allowed: {', '.join(map(str, seeds))}",
                    "type": "enum",
                }
            )
        if filters.run_id is not None and filters.run_id not in {run.id for run in runs}:
            errors.append(
                {
                    "loc": "query.run_id",
                    "msg": f"run {filters.run_id} is not part of experiment {experiment_id}",
                    "type": "value_error",
                }
            )
    if errors:
        raise InvalidInputError(errors)


def _setting_default(name: str) -> int:
    default: int = Settings.model_fields[name].default
    return default


def stream_metric_table(
    *,
    session_factory: sessionmaker[Session],
    experiment_id: uuid.UUID,
    filters: MetricFilters,
    table: MetricTable,
    output_format: OutputFormat,
    viewer: Principal | None = None,
    batch_rows: int | None = None,
    rows_per_group: int | None = None,
) -> ClosingStream:
    """The metric table as JSON text chunks, or CSV or Parquet bytes, all read on one session, ``batch_rows`` rows
    at a time (default: ``repository.FETCH_BATCH_ROWS`` for JSON, the setting export_batch_rows for CSV and
    Parquet); Parquet has one row group per ``rows_per_group`` rows (default: the setting parquet_row_group_rows).

    The filters are checked and the first batch is read before this returns, so a missing experiment,
    a bad filter or a database that does not answer is an error response (404, 422, 503), never a 200
    that stops half-way; the rest streams from the same session, closed by ClosingStream.close().
    CSV on SQLite and Parquet are encoded a column batch at a time from the driver's rows (app.metrics.export);
    CSV on PostgreSQL is the server's own ``COPY ... TO STDOUT`` (``repository.copied_csv_blocks``).
    """
    session = session_factory()
    try:
        check_metric_filters(session=session, experiment_id=experiment_id, filters=filters, viewer=viewer)
        columns = repository.metric_columns(session=session, experiment_id=experiment_id, table=table)
        chunks: Iterator[str] | Iterator[bytes]
        if output_format == "json":
            rows_per_batch = batch_rows or repository.FETCH_BATCH_ROWS
            rows = repository.iterate_table(
                table=table, session=session, experiment_id=experiment_id, filters=filters, batch_rows=rows_per_batch
            )
            first_batch = list(itertools.islice(rows, rows_per_batch))
            chunks = json_array_chunks(columns, itertools.chain(first_batch, rows), rows_per_chunk=rows_per_batch)
        else:
            chunks = _export_chunks(
                session=session,
                experiment_id=experiment_id,
                filters=filters,
                table=table,
                columns=columns,
                output_format=output_format,
                batch_rows=batch_rows or _setting_default("export_batch_rows"),
                rows_per_group=rows_per_group or _setting_default("parquet_row_group_rows"),
            )
    except BaseException:
        session.close()
        raise
    return ClosingStream(chunks, close=session.close)


def _export_chunks(
    *,
    session: Session,
    experiment_id: uuid.UUID,
    filters: MetricFilters,
    table: MetricTable,
    columns: tuple[str, ...],
    output_format: OutputFormat,
    batch_rows: int,
    rows_per_group: int,
) -> Iterator[bytes]:
    """CSV or Parquet chunks of the table, its first batch already read."""
    runs = repository.export_runs(session=session, experiment_id=experiment_id, filters=filters)
    if output_format == "csv" and session.get_bind().dialect.name == "postgresql":
        blocks = repository.copied_csv_blocks(
            session=session, table=table, runs=runs, filters=filters, batch_rows=batch_rows
        )
        first_block = list(itertools.islice(blocks, 1))
        return export.copied_csv_chunks(columns=columns, blocks=itertools.chain(first_block, blocks))
    pieces = repository.driver_row_batches(
        session=session,
        table=table,
        run_ids=[run.id for run in runs],
        filters=filters,
        schema=export.row_schema(table),
        batch_rows=batch_rows,
    )
    read = itertools.chain(list(itertools.islice(pieces, 1)), pieces)
    if output_format == "csv":
        return export.csv_chunks(columns=columns, table=table, runs=runs, pieces=read, batch_rows=batch_rows)
    return export.parquet_chunks(
        columns=columns, table=table, runs=runs, pieces=read, batch_rows=batch_rows, rows_per_group=rows_per_group
    )
