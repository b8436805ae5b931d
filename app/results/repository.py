"""SQL of the results domain: metric tables as DataFrames, progress polling for events."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, RobustnessResult, Run
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS

RUN_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "experiment_id": Run.experiment_id,
    "activation": Run.activation_label,
    "activation_index": Run.activation_index,
    "activation_name": Run.activation_name,
    "seed": Run.seed,
    "status": Run.status,
    "attempt": Run.attempt,
    "queue": Run.queue,
    "device": Run.device,
    "worker_host": Run.worker_host,
    "init_scheme": Run.init_scheme,
    "parameter_count": Run.parameter_count,
    "activation_placement": Run.activation_placement,
    "training_path": Run.training_path,
    "time_gradients": Run.time_gradients,
    "stack_id": Run.stack_id,
    "stack_size": Run.stack_size,
    "stacking_reason": Run.stacking_reason,
    "epochs_completed": Run.epochs_completed,
    "diverged_epoch": Run.diverged_epoch,
    "training_seconds": Run.training_seconds,
    "info": Run.info,
    "error": Run.error,
    "created_at": Run.created_at,
    "enqueued_at": Run.enqueued_at,
    "started_at": Run.started_at,
    "finished_at": Run.finished_at,
    "heartbeat_at": Run.heartbeat_at,
}

_RUN_KEYS: dict[str, Any] = {
    "run_id": Run.id,
    "activation": Run.activation_label,
    "activation_index": Run.activation_index,
    "activation_name": Run.activation_name,
    "seed": Run.seed,
    "status": Run.status,
}

EPOCH_COLUMNS: dict[str, Any] = {
    **_RUN_KEYS,
    "epoch": EpochMetric.epoch,
    "attempt": EpochMetric.attempt,
    **{name: getattr(EpochMetric, name) for name in EPOCH_VALUE_FIELDS},
    "recorded_at": EpochMetric.created_at,
}

LAYER_COLUMNS: dict[str, Any] = {
    **_RUN_KEYS,
    "epoch": LayerMetric.epoch,
    "layer": LayerMetric.layer,
    "layer_name": LayerMetric.layer_name,
    "attempt": LayerMetric.attempt,
    **{name: getattr(LayerMetric, name) for name in LAYER_VALUE_FIELDS},
}


ROBUSTNESS_COLUMNS: dict[str, Any] = {
    **_RUN_KEYS,
    "kind": RobustnessResult.kind,
    "strength": RobustnessResult.strength,
    "attempt": RobustnessResult.attempt,
    **{name: getattr(RobustnessResult, name) for name in ROBUSTNESS_VALUE_FIELDS},
}


def _frame(session: Session, columns: dict[str, Any], statement: Any) -> pd.DataFrame:
    rows = session.execute(statement).all()
    return pd.DataFrame([tuple(row) for row in rows], columns=list(columns))


def runs_frame(*, session: Session, experiment_id: uuid.UUID) -> pd.DataFrame:
    """The experiment's runs in grid order, one row each."""
    statement = (
        select(*RUN_COLUMNS.values()).where(Run.experiment_id == experiment_id).order_by(Run.activation_index, Run.seed)
    )
    return _frame(session, RUN_COLUMNS, statement)


CELL_COLUMNS: dict[str, Any] = {
    "run_id": Run.id,
    "cell_index": Run.cell_index,
    "cell_label": Run.cell_label,
    "cell_levels": Run.cell_levels,
}


def run_cells_frame(*, session: Session, experiment_id: uuid.UUID) -> pd.DataFrame:
    """Each run's cell of a factorial experiment (index, label, levels by path; NULLs without factors)."""
    statement = (
        select(*CELL_COLUMNS.values())
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.cell_index, Run.activation_index, Run.seed)
    )
    return _frame(session, CELL_COLUMNS, statement)


def epoch_metrics_frame(*, session: Session, experiment_id: uuid.UUID) -> pd.DataFrame:
    """Every (run, epoch) row of the experiment with its run's label, seed and status."""
    statement = (
        select(*EPOCH_COLUMNS.values())
        .join(Run, EpochMetric.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.activation_index, Run.seed, EpochMetric.epoch)
    )
    return _frame(session, EPOCH_COLUMNS, statement)


def layer_metrics_frame(*, session: Session, experiment_id: uuid.UUID) -> pd.DataFrame:
    """Every (run, epoch, layer) row of the experiment with its run's label, seed and status."""
    statement = (
        select(*LAYER_COLUMNS.values())
        .join(Run, LayerMetric.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.activation_index, Run.seed, LayerMetric.epoch, LayerMetric.layer)
    )
    return _frame(session, LAYER_COLUMNS, statement)


def robustness_frame(*, session: Session, experiment_id: uuid.UUID) -> pd.DataFrame:
    """Every (run, kind, strength) robustness row of the experiment with its run's label, seed and status."""
    statement = (
        select(*ROBUSTNESS_COLUMNS.values())
        .join(Run, RobustnessResult.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.activation_index, Run.seed, RobustnessResult.kind, RobustnessResult.strength)
    )
    return _frame(session, ROBUSTNESS_COLUMNS, statement)


def experiment_state(*, session: Session, experiment_id: uuid.UUID) -> tuple[str, int, list[tuple[Any, ...]]] | None:
    """The experiment's status, total epochs and (run_id, label, seed, status) of each run; None if it is gone."""
    found = session.execute(
        select(Experiment.status, Experiment.total_epochs).where(Experiment.id == experiment_id)
    ).first()
    if found is None:
        return None
    status, total_epochs = found
    runs = session.execute(
        select(Run.id, Run.activation_label, Run.seed, Run.status)
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.activation_index, Run.seed)
    ).all()
    return str(status), int(total_epochs or 0), [tuple(row) for row in runs]


def latest_epochs(*, session: Session, experiment_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Per run: the highest epoch with a stored row."""
    statement = (
        select(EpochMetric.run_id, func.max(EpochMetric.epoch))
        .join(Run, EpochMetric.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .group_by(EpochMetric.run_id)
    )
    return {run_id: int(epoch) for run_id, epoch in session.execute(statement)}


def epochs_after(*, session: Session, run_id: uuid.UUID, after_epoch: int) -> list[dict[str, Any]]:
    """One run's epoch rows with epoch above ``after_epoch``, in order, with the run's label and seed."""
    columns = {
        key: column for key, column in EPOCH_COLUMNS.items() if key not in ("activation_name", "status", "attempt")
    }
    statement = (
        select(*columns.values())
        .join(Run, EpochMetric.run_id == Run.id)
        .where(EpochMetric.run_id == run_id, EpochMetric.epoch > after_epoch)
        .order_by(EpochMetric.epoch)
    )
    return [dict(zip(columns, row, strict=True)) for row in session.execute(statement)]
