"""SQL read at scrape time: runs and experiments by status, newly stored epochs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, Run


def count_runs_by_status(*, session: Session) -> dict[str, int]:
    """How many runs are in each status."""
    return {
        status: int(count) for status, count in session.execute(select(Run.status, func.count()).group_by(Run.status))
    }


def count_experiments_by_status(*, session: Session) -> dict[str, int]:
    """How many experiments are in each status."""
    statement = select(Experiment.status, func.count()).group_by(Experiment.status)
    return {status: int(count) for status, count in session.execute(statement)}


def latest_epoch_metric_id(*, session: Session) -> int:
    """The largest epoch_metrics id (0 for an empty table)."""
    return int(session.scalar(select(func.max(EpochMetric.id))) or 0)


def epoch_seconds_after(*, session: Session, after_id: int, limit: int) -> list[tuple[int, float | None, str | None]]:
    """(id, epoch_seconds, queue of the run) of epoch rows with an id above ``after_id``, in id order."""
    statement = (
        select(EpochMetric.id, EpochMetric.epoch_seconds, Run.queue)
        .join(Run, EpochMetric.run_id == Run.id)
        .where(EpochMetric.id > after_id)
        .order_by(EpochMetric.id)
        .limit(limit)
    )
    return [(int(row_id), seconds, queue) for row_id, seconds, queue in session.execute(statement)]
