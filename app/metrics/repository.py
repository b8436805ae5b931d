"""SQL that reads metric tables (epochs, layers, robustness), streamed in batches through a server-side cursor."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, RobustnessResult, Run
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS
from app.spec_factors import level_value

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
    kind: str | None = None
    # ?factor.<path>=<level> filters (path, level text), resolved to the matching cells when the rows are read.
    factor_levels: tuple[tuple[str, str], ...] = ()
    cell_indexes: tuple[int, ...] | None = None


_EPOCH_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "seed": Run.seed,
    "cell": Run.cell_label,
    "epoch": EpochMetric.epoch,
    **{name: getattr(EpochMetric, name) for name in EPOCH_VALUE_FIELDS},
}

_LAYER_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "seed": Run.seed,
    "cell": Run.cell_label,
    "epoch": LayerMetric.epoch,
    "layer": LayerMetric.layer,
    "layer_name": LayerMetric.layer_name,
    **{name: getattr(LayerMetric, name) for name in LAYER_VALUE_FIELDS},
}

_ROBUSTNESS_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "seed": Run.seed,
    "cell": Run.cell_label,
    "kind": RobustnessResult.kind,
    "strength": RobustnessResult.strength,
    **{name: getattr(RobustnessResult, name) for name in ROBUSTNESS_VALUE_FIELDS},
}

_TABLE_COLUMNS: dict[str, dict[str, Any]] = {
    "epoch": _EPOCH_COLUMNS,
    "layer": _LAYER_COLUMNS,
    "robustness": _ROBUSTNESS_COLUMNS,
}

# The columns of every experiment; a factorial one adds one column per factor path (metric_columns).
EPOCH_METRIC_COLUMNS: tuple[str, ...] = tuple(_EPOCH_COLUMNS)
LAYER_METRIC_COLUMNS: tuple[str, ...] = tuple(_LAYER_COLUMNS)
ROBUSTNESS_COLUMNS: tuple[str, ...] = tuple(_ROBUSTNESS_COLUMNS)


def factor_paths(*, session: Session, experiment_id: uuid.UUID) -> list[str]:
    """The experiment's factor paths, sorted (the cells' order); none for a version-1 spec."""
    spec = session.execute(select(Experiment.spec).where(Experiment.id == experiment_id)).scalar_one_or_none()
    return sorted((spec or {}).get("factors") or {})


def metric_columns(*, session: Session, experiment_id: uuid.UUID, table: str) -> tuple[str, ...]:
    """The columns of a metric table of this experiment: the fixed ones, then one per factor path."""
    return (*_TABLE_COLUMNS[table], *factor_paths(session=session, experiment_id=experiment_id))


def _with_factor_values(rows: Iterator[Sequence[Any]], paths: list[str]) -> Iterator[Sequence[Any]]:
    """Each row (its last column the run's cell levels) with that column replaced by one value per path."""
    for row in rows:
        levels = row[-1] or {}
        yield (*row[:-1], *(level_value(levels.get(path)) for path in paths))


def _run_conditions(experiment_id: uuid.UUID, filters: MetricFilters) -> list[Any]:
    conditions: list[Any] = [Run.experiment_id == experiment_id]
    if filters.activation is not None:
        conditions.append(Run.activation_label == filters.activation)
    if filters.seed is not None:
        conditions.append(Run.seed == filters.seed)
    if filters.run_id is not None:
        conditions.append(Run.id == filters.run_id)
    if filters.cell_indexes is not None:
        conditions.append(Run.cell_index.in_(filters.cell_indexes))
    return conditions


def _with_cells(*, session: Session, experiment_id: uuid.UUID, filters: MetricFilters) -> MetricFilters:
    """The filters with their factor levels resolved to cell indexes (the service checked the levels exist)."""
    if not filters.factor_levels:
        return filters
    from app.spec_factors import cells_at_levels

    spec = session.execute(select(Experiment.spec).where(Experiment.id == experiment_id)).scalar_one_or_none()
    cells = cells_at_levels(spec or {}, dict(filters.factor_levels))
    return dataclasses.replace(filters, cell_indexes=tuple(cells))


def epoch_metrics_statement(*, experiment_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    """Per-(run, epoch) rows in the order cell, activation, seed, epoch; the run's cell levels last."""
    conditions = _run_conditions(experiment_id, filters)
    if filters.epoch_min is not None:
        conditions.append(EpochMetric.epoch >= filters.epoch_min)
    if filters.epoch_max is not None:
        conditions.append(EpochMetric.epoch <= filters.epoch_max)
    return (
        select(*_EPOCH_COLUMNS.values(), Run.cell_levels)
        .join(Run, EpochMetric.run_id == Run.id)
        .where(*conditions)
        .order_by(Run.cell_index, Run.activation_index, Run.seed, EpochMetric.epoch)
    )


def layer_metrics_statement(*, experiment_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    """Per-(run, epoch, layer) rows in the order cell, activation, seed, epoch, layer; the run's cell levels last."""
    conditions = _run_conditions(experiment_id, filters)
    if filters.epoch_min is not None:
        conditions.append(LayerMetric.epoch >= filters.epoch_min)
    if filters.epoch_max is not None:
        conditions.append(LayerMetric.epoch <= filters.epoch_max)
    if filters.layer is not None:
        conditions.append(LayerMetric.layer == filters.layer)
    return (
        select(*_LAYER_COLUMNS.values(), Run.cell_levels)
        .join(Run, LayerMetric.run_id == Run.id)
        .where(*conditions)
        .order_by(Run.cell_index, Run.activation_index, Run.seed, LayerMetric.epoch, LayerMetric.layer)
    )


def robustness_statement(*, experiment_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    """Per-(run, kind, strength) rows in the order cell, activation, seed, kind, strength; the cell levels last."""
    conditions = _run_conditions(experiment_id, filters)
    if filters.kind is not None:
        conditions.append(RobustnessResult.kind == filters.kind)
    return (
        select(*_ROBUSTNESS_COLUMNS.values(), Run.cell_levels)
        .join(Run, RobustnessResult.run_id == Run.id)
        .where(*conditions)
        .order_by(Run.cell_index, Run.activation_index, Run.seed, RobustnessResult.kind, RobustnessResult.strength)
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


_STATEMENTS: dict[str, Callable[..., Select[Any]]] = {
    "epoch": epoch_metrics_statement,
    "layer": layer_metrics_statement,
    "robustness": robustness_statement,
}


def iterate_table(
    *,
    session: Session,
    experiment_id: uuid.UUID,
    table: str,
    filters: MetricFilters,
    batch_rows: int = FETCH_BATCH_ROWS,
) -> Iterator[Sequence[Any]]:
    """The rows of a metric table (epoch, layer or robustness; columns ``metric_columns(table=...)``), streamed."""
    filters = _with_cells(session=session, experiment_id=experiment_id, filters=filters)
    statement = _STATEMENTS[table](experiment_id=experiment_id, filters=filters)
    paths = factor_paths(session=session, experiment_id=experiment_id)
    return _with_factor_values(stream_rows(session=session, statement=statement, batch_rows=batch_rows), paths)


def iterate_epoch_metrics(
    *, session: Session, experiment_id: uuid.UUID, filters: MetricFilters, batch_rows: int = FETCH_BATCH_ROWS
) -> Iterator[Sequence[Any]]:
    """Epoch metric rows (columns ``metric_columns(table="epoch")``), streamed."""
    return iterate_table(
        session=session, experiment_id=experiment_id, table="epoch", filters=filters, batch_rows=batch_rows
    )


def column_python_types(table: str) -> dict[str, type[Any] | None]:
    """The Python type of each fixed column of a metric table (None where the database type has none, e.g. JSON)."""
    types: dict[str, type[Any] | None] = {}
    for name, column in _TABLE_COLUMNS[table].items():
        try:
            types[name] = column.type.python_type
        except NotImplementedError:
            types[name] = None
    return types
