"""SQL that reads runs (the worker's state changes live in state_repository.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Run


@dataclass(frozen=True)
class RunCounts:
    """How many runs of one experiment are in each status, and their finished epochs."""

    runs_by_status: dict[str, int]
    epochs_completed_by_status: dict[str, int]


def get_run(*, session: Session, run_id: uuid.UUID) -> Run | None:
    """One run by id."""
    return session.get(Run, run_id)


def list_runs_of_experiment(*, session: Session, experiment_id: uuid.UUID, refresh: bool = False) -> list[Run]:
    """The runs of an experiment in grid order (cell, activation, then seed); ``refresh`` rereads loaded rows."""
    statement = (
        select(Run).where(Run.experiment_id == experiment_id).order_by(Run.cell_index, Run.activation_index, Run.seed)
    )
    if refresh:
        statement = statement.execution_options(populate_existing=True)
    return list(session.scalars(statement))


def count_runs_by_experiment(*, session: Session, experiment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, RunCounts]:
    """Run counts and completed epochs per status for each experiment, in one grouped query."""
    if not experiment_ids:
        return {}
    statement = (
        select(Run.experiment_id, Run.status, func.count(), func.coalesce(func.sum(Run.epochs_completed), 0))
        .where(Run.experiment_id.in_(list(experiment_ids)))
        .group_by(Run.experiment_id, Run.status)
    )
    counts: dict[uuid.UUID, RunCounts] = {}
    for experiment_id, status, runs, epochs in session.execute(statement):
        entry = counts.setdefault(experiment_id, RunCounts({}, {}))
        entry.runs_by_status[status] = int(runs)
        entry.epochs_completed_by_status[status] = int(epochs)
    return counts
