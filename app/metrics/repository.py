"""SQL that reads metric tables (epochs, layers, robustness), streamed in batches through a server-side cursor.

Three readers: ``iterate_table`` (typed rows through SQLAlchemy, for JSON); ``export_runs`` with
``driver_row_batches`` (for CSV on SQLite and Parquet): the runs once, then each run's rows in the table's order
as the database driver returns them, without SQLAlchemy's per-row processing (a large export's cost); and
``copied_csv_blocks`` (CSV on PostgreSQL): the server's own CSV of each run's rows, passed through as it comes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Float, Select, String, Text, and_, case, cast, func, literal, select
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, RobustnessResult, Run
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS
from app.spec_factors import level_value
from app.streaming import csv_value

if TYPE_CHECKING:
    import pyarrow as pa

# Rows fetched from the database per round trip while streaming JSON (CSV and Parquet: the setting
# export_batch_rows).
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
# The leading columns that are the run's (the same on each of its rows); the rest are the row's own.
RUN_COLUMNS: tuple[str, ...] = ("run_id", "activation", "seed", "cell")


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


@dataclass(frozen=True)
class ExportRun:
    """A run's columns of a metric table (``RUN_COLUMNS``, then one level per factor path)."""

    id: uuid.UUID
    activation: str
    seed: int
    cell: str | None
    factor_values: tuple[Any, ...]


def row_columns(table: str) -> tuple[str, ...]:
    """The columns of a metric table that each row has of its own, in table order (after ``RUN_COLUMNS``)."""
    return tuple(name for name in _TABLE_COLUMNS[table] if name not in RUN_COLUMNS)


def export_runs(*, session: Session, experiment_id: uuid.UUID, filters: MetricFilters) -> list[ExportRun]:
    """The runs the filters keep, in table order (cell, activation, seed), with their factor levels."""
    filters = _with_cells(session=session, experiment_id=experiment_id, filters=filters)
    paths = factor_paths(session=session, experiment_id=experiment_id)
    rows = session.execute(
        select(Run.id, Run.activation_label, Run.seed, Run.cell_label, Run.cell_levels)
        .where(*_run_conditions(experiment_id, filters))
        .order_by(Run.cell_index, Run.activation_index, Run.seed)
    )
    return [
        ExportRun(
            id=run_id,
            activation=activation,
            seed=seed,
            cell=cell,
            factor_values=tuple(level_value((levels or {}).get(path)) for path in paths),
        )
        for run_id, activation, seed, cell, levels in rows
    ]


_TABLE_MODELS: dict[str, Any] = {"epoch": EpochMetric, "layer": LayerMetric, "robustness": RobustnessResult}


def _run_rows_statement(*, table: str, run_id: uuid.UUID, filters: MetricFilters) -> Select[Any]:
    model = _TABLE_MODELS[table]
    conditions: list[Any] = [model.run_id == run_id]
    if table == "robustness":
        order = [model.kind, model.strength]
        if filters.kind is not None:
            conditions.append(model.kind == filters.kind)
    else:
        order = [model.epoch, *([model.layer] if table == "layer" else [])]
        if filters.epoch_min is not None:
            conditions.append(model.epoch >= filters.epoch_min)
        if filters.epoch_max is not None:
            conditions.append(model.epoch <= filters.epoch_max)
        if table == "layer" and filters.layer is not None:
            conditions.append(model.layer == filters.layer)
    # The unique key (run_id, epoch[, layer] or kind, strength) serves both the filter and the order: no sort.
    columns = _TABLE_COLUMNS[table]
    return select(*(columns[name] for name in row_columns(table))).where(*conditions).order_by(*order)


def _driver_statement(statement: Select[Any], dialect: Dialect) -> tuple[str, Any]:
    """The statement's SQL and parameters as the driver takes them (bound values converted by their types)."""
    compiled = statement.compile(dialect=dialect)
    values: dict[str, Any] = {}
    for name, value in compiled.construct_params().items():
        processor = compiled.binds[name].type.bind_processor(dialect)
        values[name] = processor(value) if processor is not None else value
    if dialect.positional:
        return str(compiled), tuple(values[name] for name in compiled.positiontup or ())
    return str(compiled), values


def _exact_postgres_text(connection: Any) -> None:
    """Floats in their shortest exact text (PostgreSQL 12+; 17 digits before) and UTF-8, for this transaction.

    A server configured with ``extra_float_digits = 0`` would otherwise round every float to 15 digits.
    """
    connection.exec_driver_sql("SET LOCAL extra_float_digits = 3")
    connection.exec_driver_sql("SET LOCAL client_encoding = 'UTF8'")


def driver_row_batches(
    *,
    session: Session,
    table: str,
    run_ids: Sequence[uuid.UUID],
    filters: MetricFilters,
    schema: pa.Schema,
    batch_rows: int,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(position in ``run_ids``, a batch of about ``batch_rows`` of its rows) of each run in turn: the
    ``row_columns`` typed by ``schema`` (JSON columns as the database's JSON text), without SQLAlchemy's rows.

    SQLite: the driver's rows, converted to Arrow in one call per batch (a struct array of the row tuples).
    PostgreSQL: ``copied_csv_blocks`` of each run, each block parsed by Arrow (the server writes floats in their
    shortest exact form, which Arrow reads back to the same double).
    """
    import pyarrow as pa

    connection = session.connection()
    dialect = connection.dialect
    driver: Any = connection.connection.driver_connection
    if dialect.name == "postgresql":
        _exact_postgres_text(connection)
    rows_type = pa.struct(list(schema))
    for position, run_id in enumerate(run_ids):
        sql, parameters = _driver_statement(_run_rows_statement(table=table, run_id=run_id, filters=filters), dialect)
        if dialect.name == "postgresql":
            for block in _copied_blocks(driver, sql, parameters, batch_rows):
                yield position, _parsed_csv(block, schema)
            continue
        cursor = driver.cursor()
        try:
            cursor.execute(sql, parameters)
            while rows := cursor.fetchmany(batch_rows):
                yield position, pa.RecordBatch.from_struct_array(pa.array(rows, rows_type))
        finally:
            # The session may have been closed first (a client that went away): its connection took the cursor.
            with contextlib.suppress(Exception):
                cursor.close()


def copied_csv_blocks(
    *, session: Session, table: str, runs: Sequence[ExportRun], filters: MetricFilters, batch_rows: int
) -> Iterator[bytes]:
    """PostgreSQL only: the table's CSV lines (no header) as ``COPY ... TO STDOUT`` writes them, each run's
    columns and factor levels bound into its query, in blocks of ``batch_rows`` lines: no value passes
    through Python. The layout is PostgreSQL's (README, "Metric tables as CSV"): floats in their shortest exact
    text (``1.0``, ``0.1``, ``1e-05``, ``1e+15``, ``Infinity``, ``NaN``), JSON as jsonb writes it, a text quoted
    where it holds a comma, quote or line break, an empty text as ``""`` and a missing value as an empty field.
    """
    connection = session.connection()
    _exact_postgres_text(connection)
    driver: Any = connection.connection.driver_connection
    for run in runs:
        leading: list[Any] = [
            literal(str(run.id), String),
            literal(run.activation, String),
            literal(run.seed, BigInteger),
            literal(run.cell, String),
        ]
        trailing = [literal(None if value is None else str(csv_value(value)), String) for value in run.factor_values]
        statement = _run_rows_statement(table=table, run_id=run.id, filters=filters)
        own = [_copied_text(column) for column in statement.selected_columns]
        statement = statement.with_only_columns(*leading, *own, *trailing)
        yield from _copied_blocks(driver, *_driver_statement(statement, connection.dialect), batch_rows)


def _copied_text(column: Any) -> Any:
    """A column as COPY should write it: a float as PostgreSQL writes it, with ``.0`` on a whole number written
    without an exponent (below 1e15), so that pandas reads every float column as floats (``4001`` alone would
    read as an integer); a stored JSON null as a missing value (as the ORM reads it); the rest as they are."""
    if isinstance(column.type, Float):
        text = cast(column, Text)
        return case((and_(column == func.trunc(column), func.abs(column) < 1e15), text + ".0"), else_=text)
    if isinstance(column.type, JSON):
        return func.nullif(cast(column, Text), "null")
    return column


def _copied_blocks(driver: Any, sql: str, parameters: Any, batch_rows: int) -> Iterator[bytes]:
    """The CSV of ``COPY (sql) TO STDOUT`` in blocks of ``batch_rows`` whole lines (the driver hands out a line
    at a time)."""
    with driver.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", parameters) as copy:
        while block := b"".join(itertools.islice(copy, batch_rows)):
            yield block


def _parsed_csv(block: bytes, schema: pa.Schema) -> pa.RecordBatch:
    """A block of COPY's CSV lines as a record batch of ``schema`` (NULL is an empty field, an empty text "")."""
    import pyarrow as pa
    import pyarrow.csv as arrow_csv

    table = arrow_csv.read_csv(
        pa.BufferReader(block),
        # One block at a time, in this thread: Arrow's read-ahead and thread pool would hold more blocks.
        read_options=arrow_csv.ReadOptions(column_names=schema.names, use_threads=False, block_size=len(block) + 1),
        convert_options=arrow_csv.ConvertOptions(
            column_types={field.name: field.type for field in schema},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return pa.concat_batches(table.to_batches())
