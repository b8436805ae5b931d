"""SQL of the HTML pages: the dashboard's light summary of each listed experiment's final metric."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Run, RunStatus

# The metric the dashboard's best-activation column reads: the report's default (final test accuracy).
DASHBOARD_METRIC = "test_accuracy"


@dataclass(frozen=True)
class FinalMean:
    """One (experiment, cell, activation): the mean of its succeeded runs' last-epoch metric and how many ran."""

    experiment_id: uuid.UUID
    cell_index: int
    activation: str
    mean: float
    runs: int


def final_means(*, session: Session, experiment_ids: Sequence[uuid.UUID]) -> list[FinalMean]:
    """Per (experiment, cell, activation), the mean final test accuracy of the succeeded runs, in one query.

    A run's final epoch is its ``epochs_completed`` (epochs are numbered from 1; epoch 0 is the network at
    initialisation), read through the (run_id, epoch) unique index, so the cost is one row per run.
    """
    if not experiment_ids:
        return []
    metric = getattr(EpochMetric, DASHBOARD_METRIC)
    statement = (
        select(Run.experiment_id, Run.cell_index, Run.activation_label, func.avg(metric), func.count())
        .join(EpochMetric, (EpochMetric.run_id == Run.id) & (EpochMetric.epoch == Run.epochs_completed))
        .where(
            Run.experiment_id.in_(list(experiment_ids)),
            Run.status == RunStatus.succeeded,
            Run.epochs_completed > 0,
            metric.is_not(None),
        )
        .group_by(Run.experiment_id, Run.cell_index, Run.activation_label)
    )
    return [
        FinalMean(
            experiment_id=row[0], cell_index=int(row[1]), activation=str(row[2]), mean=float(row[3]), runs=int(row[4])
        )
        for row in session.execute(statement)
    ]
