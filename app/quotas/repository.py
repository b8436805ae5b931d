"""SQL behind the quotas: an owner's active runs and recent submissions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from app.models import Experiment, Run, RunStatus


def _owned_by(owner_id: uuid.UUID | None) -> ColumnElement[bool]:
    # Without authentication every experiment has no owner; they share one quota.
    return Experiment.owner_id.is_(None) if owner_id is None else Experiment.owner_id == owner_id


def count_active_runs(*, session: Session, owner_id: uuid.UUID | None) -> int:
    """Queued and running runs of the owner's experiments."""
    statement = (
        select(func.count(Run.id))
        .join(Experiment, Run.experiment_id == Experiment.id)
        .where(_owned_by(owner_id), Run.status.in_([RunStatus.queued, RunStatus.running]))
    )
    return int(session.scalar(statement) or 0)


def submissions_since(*, session: Session, owner_id: uuid.UUID | None, since: datetime) -> tuple[int, datetime | None]:
    """How many experiments the owner created after ``since``, and when the oldest of them was created."""
    statement = select(func.count(Experiment.id), func.min(Experiment.created_at)).where(
        _owned_by(owner_id), Experiment.created_at > since
    )
    count, oldest = session.execute(statement).one()
    return int(count or 0), oldest
