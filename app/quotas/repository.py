"""SQL behind the quotas: an owner's active runs and recent submissions (experiments and seed extensions)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, func, select, union_all
from sqlalchemy.orm import Session

from app.models import Experiment, Run, RunStatus, SeedExtension


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
    """How many experiments and seed extensions the owner created after ``since``, and when the oldest was created."""
    experiments = select(Experiment.created_at.label("created_at")).where(
        _owned_by(owner_id), Experiment.created_at > since
    )
    extensions = (
        select(SeedExtension.created_at.label("created_at"))
        .join(Experiment, SeedExtension.experiment_id == Experiment.id)
        .where(_owned_by(owner_id), SeedExtension.created_at > since)
    )
    recent = union_all(experiments, extensions).subquery()
    count, oldest = session.execute(select(func.count(), func.min(recent.c.created_at))).one()
    return int(count or 0), oldest
