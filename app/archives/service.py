"""Rules of archives: export an experiment as a zip, import one as a new experiment.

An archive holds spec.json (the canonical spec), experiment.json (status and timestamps), runs.csv
(with each run's cell_index in a factorial experiment: runs are keyed by cell, activation and seed),
metrics.csv, layer_metrics.csv and robustness.csv (the stored rows with trace columns; robustness rows
only where the spec has an evaluation block, app.archives.robustness), and results.csv and
diagnostics.csv (the default result tables, for reading without the service). An import checks every
member against the spec's arms (in every cell) and the limits in force, and stores nothing unless all of it is valid;
nothing is trained.
"""

from __future__ import annotations

import io
import json
import typing
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from app.archives import repository
from app.archives.members import (
    ARCHIVE_FORMAT_VERSION,
    archive_error,
    integers,
    numeric,
    optional,
    optional_datetime,
    optional_integer,
    optional_json,
    optional_number,
    optional_text,
    parse_spec,
    read_csv,
    read_members,
    read_metadata,
)
from app.archives.robustness import ROBUSTNESS_MEMBER, read_robustness
from app.config import Settings
from app.experiments import repository as experiments_repository
from app.experiments import service as experiments_service
from app.gradient_flow import GRADIENT_FLAGS
from app.models import EpochMetric, Experiment, LayerMetric, RobustnessResult, Run, RunStatus
from app.models.epoch_metric import EPOCH_FLAG_FIELDS, EPOCH_NUMBER_FIELDS
from app.models.layer_metric import LAYER_NUMBER_FIELDS
from app.models.status import FINISHED_RUN_STATUSES
from app.models.types import utc_now
from app.results import service as results_service
from app.results.encoding import encode_table, timestamps_utc
from app.results.statistics import ResultOptions
from app.schemas import as_utc
from app.spec import ExperimentSpec, TrainMetrics
from app.spec_factors import arm_count, cell_columns, expand_cells, level_value
from app.spec_models import CnnSpec, MlpSpec

ARCHIVE_MEDIA_TYPE = "application/zip"


@dataclass(frozen=True)
class ExportedArchive:
    """An experiment's archive and the name to download it as."""

    filename: str
    content: bytes


def _iso(value: datetime | None) -> str | None:
    moment = as_utc(value)
    return moment.isoformat() if moment is not None else None


def _experiment_metadata(experiment: Experiment) -> dict[str, Any]:
    return {
        "archive_format_version": ARCHIVE_FORMAT_VERSION,
        "experiment_id": str(experiment.id),
        "name": experiment.name,
        "status": str(experiment.status),
        "spec_hash": experiment.spec_hash,
        "spec_version": experiment.spec_version,
        "created_at": _iso(experiment.created_at),
        "started_at": _iso(experiment.started_at),
        "finished_at": _iso(experiment.finished_at),
        "cancel_requested_at": _iso(experiment.cancel_requested_at),
        "error": experiment.error,
        "exported_at": utc_now().isoformat(),
    }


def archive_filename(experiment: Experiment) -> str:
    """A download name such as actlab-3f2a....zip."""
    return f"actlab-{experiment.id}.zip"


def _runs_with_cells(tables: results_service.ExperimentTables) -> pd.DataFrame:
    """The runs table with each run's cell index (what an import keys runs by, with activation and seed)."""
    if tables.cells.empty:
        return tables.runs
    cells = tables.cells[["run_id", "cell_index"]]
    return tables.runs.merge(cells, on="run_id", how="left")


def _with_factor_columns(frame: pd.DataFrame, tables: results_service.ExperimentTables) -> pd.DataFrame:
    """A run-keyed table with the metric tables' cell columns of a factorial experiment: ``cell`` (the label) and
    one column per factor path (``level_value``: lists and blocks as compact JSON text); as it is without factors."""
    factors = tables.factors
    if not factors or tables.cells.empty:
        return frame
    cells = tables.cells.set_index("run_id")
    labels = cells["cell_label"].to_dict()
    levels = {run_id: value or {} for run_id, value in cells["cell_levels"].to_dict().items()}
    extended = frame.copy()
    extended["cell"] = pd.Series([labels.get(run_id) for run_id in frame["run_id"]], index=frame.index, dtype=object)
    for path in factors:
        values = [
            level_value(levels[run_id][path]) if path in levels.get(run_id, {}) else None for run_id in frame["run_id"]
        ]
        extended[path] = pd.Series(values, index=frame.index, dtype=object)
    return extended


def export_archive(*, session: Session, experiment_id: uuid.UUID) -> ExportedArchive:
    """The experiment as a zip; NotFoundError when it does not exist."""
    tables = results_service.load_tables(session=session, experiment_id=experiment_id)
    experiment = tables.experiment
    options = ResultOptions()

    def cells(frame: pd.DataFrame) -> pd.DataFrame:
        return _with_factor_columns(frame, tables)

    members: dict[str, bytes] = {
        "spec.json": json.dumps(experiment.spec, indent=2, sort_keys=True).encode(),
        "experiment.json": json.dumps(_experiment_metadata(experiment), indent=2).encode(),
        "runs.csv": encode_table(
            results_service.with_trace(timestamps_utc(cells(_runs_with_cells(tables))), experiment), "csv"
        ),
        "metrics.csv": encode_table(
            results_service.with_trace(timestamps_utc(cells(tables.metrics)), experiment), "csv"
        ),
        "layer_metrics.csv": encode_table(results_service.with_trace(cells(tables.layers), experiment), "csv"),
        ROBUSTNESS_MEMBER: encode_table(results_service.with_trace(cells(tables.robustness), experiment), "csv"),
        "results.csv": encode_table(results_service.summary_table(tables=tables, options=options), "csv"),
        "diagnostics.csv": encode_table(results_service.diagnostics_table(tables=tables), "csv"),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            # Member dates carry nothing (experiment.json has exported_at); a fixed one keeps them out of diffs.
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return ExportedArchive(filename=archive_filename(experiment), content=buffer.getvalue())


_RUN_STATUSES = frozenset(str(status) for status in RunStatus)
_FINISHED = frozenset(str(status) for status in FINISHED_RUN_STATUSES)


@dataclass(frozen=True)
class ImportOutcome:
    """What an import created."""

    experiment: Experiment
    imported_from: str | None
    runs: int
    epoch_metrics: int
    layer_metrics: int
    robustness: int = 0


def _build_runs(
    runs_frame: pd.DataFrame, spec: ExperimentSpec, experiment_id: uuid.UUID
) -> tuple[list[Run], dict[str, uuid.UUID], bool]:
    """New Run rows for the archive's runs (checked against the spec's arms in every cell) and the old -> new id map.

    A run is keyed by (cell_index, activation_index, seed); an archive without a cell_index column (a
    version-1 experiment) has every run in cell 0."""
    if "cell_index" not in runs_frame.columns:
        runs_frame = runs_frame.assign(cell_index=0)
    runs_frame = runs_frame.assign(cell_index=runs_frame["cell_index"].fillna(0))
    integers(runs_frame, ("cell_index", "activation_index", "seed"), "runs.csv")
    cells = expand_cells(spec)
    expected = {(cell.index, arm.activation_index, arm.seed): arm.label for cell in cells for arm in cell.spec.arms()}
    seen: set[tuple[int, int, int]] = set()
    mapping: dict[str, uuid.UUID] = {}
    runs: list[Run] = []
    unfinished = False
    for position, row in enumerate(runs_frame.to_dict("records"), start=1):
        where = f"runs.csv.row {position}"
        key = (int(row["cell_index"]), int(row["activation_index"]), int(row["seed"]))
        arm_text = f"cell_index {key[0]}, activation_index {key[1]} with seed {key[2]}"
        if key not in expected:
            raise archive_error(where, f"{arm_text} is not an arm of spec.json")
        if key in seen:
            raise archive_error(where, f"{arm_text} appears twice")
        seen.add(key)
        if str(row["activation"]) != expected[key]:
            raise archive_error(where, f"activation {row['activation']!r} should be {expected[key]!r} as in spec.json")
        status = str(row["status"])
        if status not in _RUN_STATUSES:
            raise archive_error(where, f"status {status!r} must be one of {', '.join(sorted(_RUN_STATUSES))}")
        old_id = str(row["run_id"])
        if old_id in mapping:
            raise archive_error(where, f"run_id {old_id} appears twice")
        new_id = uuid.uuid4()
        mapping[old_id] = new_id
        error = optional(row.get("error"))
        if status not in _FINISHED:
            # Nothing will ever train an imported run: an unfinished one is stored as cancelled.
            unfinished = True
            error = f"imported while {status}; stored as cancelled"
            status = str(RunStatus.cancelled)
        arm_spec = spec.activations[key[1]]
        runs.append(
            Run(
                id=new_id,
                experiment_id=experiment_id,
                activation_index=key[1],
                activation_label=expected[key],
                activation_name=arm_spec.canonical_name,
                seed=key[2],
                **cell_columns(cells[key[0]]),
                status=status,
                attempt=optional_integer(row.get("attempt"), f"{where}.attempt") or 0,
                queue=optional(row.get("queue")),
                device=optional(row.get("device")),
                worker_host=optional(row.get("worker_host")),
                init_scheme=optional(row.get("init_scheme")),
                parameter_count=optional_integer(row.get("parameter_count"), f"{where}.parameter_count"),
                activation_placement=optional(row.get("activation_placement")),
                training_path=optional(row.get("training_path")),
                time_gradients=_bounded_text(row, "time_gradients", where, 300),
                stack_id=_bounded_text(row, "stack_id", where, 36),
                stack_size=optional_integer(row.get("stack_size"), f"{where}.stack_size"),
                stacking_reason=optional_text(row.get("stacking_reason"), f"{where}.stacking_reason"),
                epochs_completed=optional_integer(row.get("epochs_completed"), f"{where}.epochs_completed") or 0,
                diverged_epoch=optional_integer(row.get("diverged_epoch"), f"{where}.diverged_epoch"),
                training_seconds=optional_number(row.get("training_seconds"), f"{where}.training_seconds"),
                info=optional_json(row.get("info"), f"{where}.info"),
                error=error,
                created_at=optional_datetime(row.get("created_at"), f"{where}.created_at") or utc_now(),
                enqueued_at=optional_datetime(row.get("enqueued_at"), f"{where}.enqueued_at"),
                started_at=optional_datetime(row.get("started_at"), f"{where}.started_at"),
                finished_at=optional_datetime(row.get("finished_at"), f"{where}.finished_at"),
            )
        )
    missing = sorted(set(expected) - seen)
    if missing:
        cell, index, seed = missing[0]
        where = f" in cell {cells[cell].label}" if cells[cell].label else ""
        raise archive_error(
            "runs.csv",
            f"{len(missing)} arm(s) of spec.json have no run, e.g. {expected[(cell, index, seed)]!r} seed {seed}{where}",
        )
    return runs, mapping, unfinished


def _bounded_text(row: dict[str, Any], name: str, where: str, width: int) -> str | None:
    """A run's text cell cut to its column's width (an archive may come from anywhere)."""
    value = optional_text(row.get(name), f"{where}.{name}")
    return value[:width] if value else None


def _epoch_cells(row: dict[str, Any], record: dict[str, Any], position: int) -> None:
    for name in EPOCH_FLAG_FIELDS:
        flag = optional(record.get(name))
        if flag is not None and flag not in GRADIENT_FLAGS:
            raise archive_error(f"metrics.csv.row {position}.{name}", f"{flag!r} must be vanishing, exploding or empty")
        row[name] = flag
    # An archive written before the column existed holds running train metrics, the only kind there was.
    measured = optional(record.get("train_metrics")) or "running"
    if measured not in typing.get_args(TrainMetrics):
        allowed = ", ".join(typing.get_args(TrainMetrics))
        raise archive_error(f"metrics.csv.row {position}.train_metrics", f"{measured!r} must be {allowed} or empty")
    row["train_metrics"] = measured
    # An archive written before the column existed has no step: it stays empty.
    row["step"] = optional_integer(record.get("step"), f"metrics.csv.row {position}.step")


def _layer_cells(row: dict[str, Any], record: dict[str, Any], position: int) -> None:
    row["layer_name"] = str(record["layer_name"])[:80]
    row["activation_parameters"] = optional_json(
        record.get("activation_parameters"), f"layer_metrics.csv.row {position}.activation_parameters"
    )
    where = f"layer_metrics.csv.row {position}.time_grad_norms"
    norms = optional_json(record.get("time_grad_norms"), where)
    if norms is not None and not (
        isinstance(norms, list)
        and all(norm is None or (isinstance(norm, int | float) and not isinstance(norm, bool)) for norm in norms)
    ):
        raise archive_error(where, "must be a JSON list of numbers (null where not finite) or empty")
    row["time_grad_norms"] = norms


@dataclass(frozen=True)
class _MetricTable:
    """A metric CSV of an archive: its name, table, key and number columns, and how its other cells are read."""

    name: str
    model: type[EpochMetric] | type[LayerMetric]
    keys: tuple[str, ...]
    values: tuple[str, ...]
    cells: Callable[[dict[str, Any], dict[str, Any], int], None]


_EPOCH_TABLE = _MetricTable("metrics.csv", EpochMetric, ("epoch",), EPOCH_NUMBER_FIELDS, _epoch_cells)
_LAYER_TABLE = _MetricTable("layer_metrics.csv", LayerMetric, ("epoch", "layer"), LAYER_NUMBER_FIELDS, _layer_cells)


def _check_metric_frame(
    frame: pd.DataFrame, table: _MetricTable, *, mapping: Mapping[str, uuid.UUID], maximum_epoch: int
) -> None:
    """Whole-table checks of a metric CSV (numbers, known runs, unique keys, epochs in range), before any write."""
    name, keys = table.name, table.keys
    integers(frame, keys, name)
    numeric(frame, table.values, name)
    unknown = ~frame["run_id"].astype(str).isin(set(mapping))
    if unknown.any():
        position = int(np.flatnonzero(unknown.to_numpy())[0])
        raise archive_error(
            f"{name}.run_id", f"row {position + 1}: run {frame['run_id'].iloc[position]} is not in runs.csv"
        )
    duplicated = frame.duplicated(subset=["run_id", *keys])
    if duplicated.any():
        position = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise archive_error(
            name, f"row {position + 1} repeats the key ({', '.join(['run_id', *keys])}) of an earlier row"
        )
    epochs = frame["epoch"]
    if len(frame) and (epochs.min() < 0 or epochs.max() > maximum_epoch):
        raise archive_error(f"{name}.epoch", f"epochs must lie between 0 and the spec's {maximum_epoch}")


def _metric_batches(
    frame: pd.DataFrame, table: _MetricTable, *, mapping: Mapping[str, uuid.UUID], size: int
) -> Iterator[list[dict[str, Any]]]:
    """A checked metric table as insert rows, SIZE at a time: only one batch of row dicts is alive at once."""
    for start in range(0, len(frame), size):
        batch = []
        for offset, record in enumerate(frame.iloc[start : start + size].to_dict("records")):
            row: dict[str, Any] = {"run_id": mapping[str(record["run_id"])]}
            row.update({key: int(record[key]) for key in table.keys})
            row.update({value: optional(record.get(value)) for value in table.values})
            row["attempt"] = optional_integer(record.get("attempt"), f"{table.name}.attempt") or 0
            table.cells(row, record, start + offset + 1)
            batch.append(row)
        yield batch


def layers_per_epoch(spec: ExperimentSpec) -> int:
    """Layer rows a run records each epoch: the layers with weights of its model, output last (as the worker's
    ``diagnostic_layers`` lists them: MLP hidden + output; CNN conv + hidden + output; RNN recurrent + output,
    and a head for GRU/LSTM)."""
    model = spec.model
    if isinstance(model, MlpSpec):
        return len(model.hidden) + 1
    if isinstance(model, CnnSpec):
        return len(model.channels) + len(model.hidden) + 1
    return model.layers + (1 if model.cell == "rnn" else 2)


def import_archive(
    *, session: Session, content: bytes, settings: Settings, owner_id: uuid.UUID | None = None
) -> ImportOutcome:
    """Store an archive from GET .../export as a new experiment with its runs and metrics (statuses kept).

    Rows are bounded by what the archive's spec could have produced (runs: its arms; epoch rows: runs x epochs;
    layer rows: epoch rows x the model's layers) and by ACTLAB_MAX_IMPORT_ROWS in all; a CSV is parsed only up
    to its bound, so an oversized one is refused before it takes memory."""
    members = read_members(content, max_uncompressed_bytes=settings.max_import_uncompressed_bytes)
    payload, spec = parse_spec(members["spec.json"], settings)
    metadata = read_metadata(members)
    experiment_id = uuid.uuid4()
    runs_frame = read_csv(
        "runs.csv",
        members["runs.csv"],
        ("run_id", "activation", "activation_index", "seed", "status"),
        max_rows=arm_count(spec),
    )
    runs, mapping, unfinished = _build_runs(runs_frame, spec, experiment_id)
    # Each cell's evaluations (epochs, or those of a step budget; a factor may change them between cells).
    epochs = max(cell.spec.training.evaluations for cell in expand_cells(spec))
    # Epoch 0 (the network at initialisation; archives from before it lack it) and every trained epoch.
    rows_per_run = epochs + 1
    epoch_frame = read_csv(
        "metrics.csv",
        members["metrics.csv"],
        ("run_id", "epoch"),
        max_rows=min(len(runs) * rows_per_run, settings.max_import_rows),
    )
    _check_metric_frame(epoch_frame, _EPOCH_TABLE, mapping=mapping, maximum_epoch=epochs)
    layer_frame = read_csv(
        "layer_metrics.csv",
        members["layer_metrics.csv"],
        ("run_id", "epoch", "layer", "layer_name"),
        max_rows=min(
            len(runs) * rows_per_run * max(layers_per_epoch(cell.spec) for cell in expand_cells(spec)),
            settings.max_import_rows - len(epoch_frame),
        ),
    )
    robustness_rows = read_robustness(
        members, spec=spec, mapping=mapping, max_rows=settings.max_import_rows - len(epoch_frame) - len(layer_frame)
    )
    del members
    _check_metric_frame(layer_frame, _LAYER_TABLE, mapping=mapping, maximum_epoch=epochs)
    cancel_requested = optional_datetime(metadata.get("cancel_requested_at"), "experiment.json.cancel_requested_at")
    if unfinished and cancel_requested is None:
        cancel_requested = utc_now()
    status = experiments_service.derive_experiment_status(
        run_statuses=[str(run.status) for run in runs], cancel_requested=cancel_requested is not None
    )
    started = [run.started_at for run in runs if run.started_at is not None]
    finished = [run.finished_at for run in runs if run.finished_at is not None]
    experiment = Experiment(
        id=experiment_id,
        name=spec.name,
        status=str(status),
        spec=spec.model_dump(mode="json"),
        submitted_spec=payload,
        spec_hash=spec.spec_hash(),
        spec_version=spec.version,
        device=spec.device,
        queue=None,
        total_epochs=len(runs) * epochs,
        idempotency_key=None,
        owner_id=owner_id,
        error=optional_text(metadata.get("error"), "experiment.json.error"),
        created_at=optional_datetime(metadata.get("created_at"), "experiment.json.created_at") or utc_now(),
        started_at=min(started) if started else None,
        finished_at=optional_datetime(metadata.get("finished_at"), "experiment.json.finished_at")
        or (max(finished) if finished else utc_now()),
        cancel_requested_at=cancel_requested,
    )
    tables = ((epoch_frame, _EPOCH_TABLE), (layer_frame, _LAYER_TABLE))
    # Short transactions: the experiment and its runs, then each batch of metric rows, each committed, so a
    # worker's heartbeat can write between them on SQLite. Atomic for the user: a failure midway deletes the
    # partly imported experiment (and its rows) before the error reaches them.
    repository.insert_experiment_with_runs(session=session, experiment=experiment, runs=runs)
    session.commit()
    try:
        for frame, table in tables:
            for batch in _metric_batches(frame, table, mapping=mapping, size=settings.import_batch_rows):
                repository.insert_metric_rows(session=session, model=table.model, rows=batch)
                # Results read between two batches are partial: the bump keeps them out of the cache's answers.
                experiments_repository.bump_results_version(session=session, experiment_id=experiment_id)
                session.commit()
        for start in range(0, len(robustness_rows), settings.import_batch_rows):
            batch = robustness_rows[start : start + settings.import_batch_rows]
            repository.insert_metric_rows(session=session, model=RobustnessResult, rows=batch)
            session.commit()
    except BaseException:
        session.rollback()
        repository.delete_experiment(session=session, experiment_id=experiment_id)
        session.commit()
        raise
    imported_from = metadata.get("experiment_id")
    return ImportOutcome(
        experiment=experiment,
        imported_from=str(imported_from) if imported_from else None,
        runs=len(runs),
        epoch_metrics=len(epoch_frame),
        layer_metrics=len(layer_frame),
        robustness=len(robustness_rows),
    )
