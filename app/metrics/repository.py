"""SQL that reads metric tables, streamed in batches through a server-side cursor."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, LayerMetric, Run
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS

# Rows fetched from the database per round trip while streaming.
FETCH_BATCH_ROWS = 1000


@dataclass(frozen=True)
class MetricFilters:
    """Which rows of a metric table to return; None means no filter."""

    activation: str | None = None
    seed: int | None = None
    run_id: uuid.UUID | None = None
    epoch_min: int | None = None
    epoch_max: int | None = None
    layer: int | None = None


_EPOCH_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "seed": Run.seed,
    "epoch": EpochMetric.epoch,
    **{name: getattr(EpochMetric, name) for name in EPOCH_VALUE_FIELDS},
}

_LAYER_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "seed": Run.seed,
    "epoch": LayerMetric.epoch,
    "layer": LayerMetric.layer,
    "layer_name": LayerMetric.layer_name,
    **{name: getattr(LayerMetric, name) for name in LAYER_VALUE_FIELDS},
}

EPOCH_METRIC_COLUMNS: tuple[str, ...] = tuple(_EPOCH_COLUMNS)
LAYER_METRIC_COLUMNS: tuple[str, ...] = tuple(_LAYER_COLUMNS)


def _run_conditions(experiment_id: uuid.UUID, filters: MetricFilters) -> list[Any]:
    conditions: list[Any] = [Run.experiment_id == experiment_id]
    if filters.activation is not None:
        conditions.append(Run.activation_label == filters.activation)
    if filters.seed is not None:
        conditions.append(Run.seed == filters.seed)
    if filters.run_id is not None:
        conditions.append(Run.id == filters.run_id)
    return conditions


def epoch_metrics_statement(*, experiment_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    """Per-(run, epoch) rows in the order activation, seed, epoch."""
    conditions = _run_conditions(experiment_id, filters)
    if filters.epoch_min is not None:
        conditions.append(EpochMetric.epoch >= filters.epoch_min)
    if filters.epoch_max is not None:
        conditions.append(EpochMetric.epoch <= filters.epoch_max)
    return (
        select(*_EPOCH_COLUMNS.values())
        .join(Run, EpochMetric.run_id == Run.id)
        .where(*conditions)
        .order_by(Run.activation_index, Run.seed, EpochMetric.epoch)
    )


def layer_metrics_statement(*, experiment_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    """Per-(run, epoch, layer) rows in the order activation, seed, epoch, layer."""
    conditions = _run_conditions(experiment_id, filters)
    if filters.epoch_min is not None:
        conditions.append(LayerMetric.epoch >= filters.epoch_min)
    if filters.epoch_max is not None:
        conditions.append(LayerMetric.epoch <= filters.epoch_max)
    if filters.layer is not None:
        conditions.append(LayerMetric.layer == filters.layer)
    return (
        select(*_LAYER_COLUMNS.values())
        .join(Run, LayerMetric.run_id == Run.id)
        .where(*conditions)
        .order_by(Run.activation_index, Run.seed, LayerMetric.epoch, LayerMetric.layer)
    )


def stream_rows(
    *, session: Session, statement: Select[Any], batch_rows: int = FETCH_BATCH_ROWS
) -> Iterator[Sequence[Any]]:
    """The statement's rows, fetched ``batch_rows`` at a time (a server-side cursor on PostgreSQL)."""
    result = session.execute(statement.execution_options(yield_per=batch_rows))
    try:
        yield from result
    finally:
        result.close()


def iterate_epoch_metrics(
    *, session: Session, experiment_id: uuid.UUID, filters: MetricFilters, batch_rows: int = FETCH_BATCH_ROWS
) -> Iterator[Sequence[Any]]:
    """Epoch metric rows (columns EPOCH_METRIC_COLUMNS), streamed."""
    statement = epoch_metrics_statement(experiment_id=experiment_id, filters=filters)
    return stream_rows(session=session, statement=statement, batch_rows=batch_rows)


def iterate_layer_metrics(
    *, session: Session, experiment_id: uuid.UUID, filters: MetricFilters, batch_rows: int = FETCH_BATCH_ROWS
) -> Iterator[Sequence[Any]]:
    """Layer metric rows (columns LAYER_METRIC_COLUMNS), streamed."""
    statement = layer_metrics_statement(experiment_id=experiment_id, filters=filters)
    return stream_rows(session=session, statement=statement, batch_rows=batch_rows)
