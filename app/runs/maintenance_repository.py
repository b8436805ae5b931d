"""SQL of the maintenance passes: runs whose heartbeat went stale, queued runs that need a task, the pass lock.

Every state change is conditional on what the pass read (status, attempt, heartbeat still
old), so a worker that claims or beats at the same moment wins and the pass changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app.models import Experiment, Run, RunStatus

# Key of the PostgreSQL advisory lock that lets one maintenance pass run at a time per database.
MAINTENANCE_LOCK_KEY = 0x6163746C_61620001


@dataclass(frozen=True)
class StaleRun:
    """A running run whose last sign of life is older than the stale limit."""

    run_id: uuid.UUID
    experiment_id: uuid.UUID
    attempt: int
    worker_host: str | None
    last_seen_at: datetime


@dataclass(frozen=True)
class PendingRun:
    """A queued run that may need its task sent (again)."""

    run_id: uuid.UUID
    experiment_id: uuid.UUID
    queue: str
    enqueued_at: datetime | None


def _last_seen() -> Any:
    return func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)


def find_stale_runs(*, session: Session, seen_before: datetime) -> list[StaleRun]:
    """Running runs whose heartbeat (or start) is older than ``seen_before``, oldest first."""
    last_seen = _last_seen()
    rows = session.execute(
        select(Run.id, Run.experiment_id, Run.attempt, Run.worker_host, last_seen)
        .where(Run.status == RunStatus.running.value, last_seen < seen_before)
        .order_by(last_seen)
    ).all()
    return [
        StaleRun(run_id=run_id, experiment_id=experiment_id, attempt=attempt, worker_host=host, last_seen_at=seen)
        for run_id, experiment_id, attempt, host, seen in rows
    ]


def _stale_update(*, session: Session, run: StaleRun, seen_before: datetime, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(Run)
        .where(
            Run.id == run.run_id,
            Run.status == RunStatus.running.value,
            Run.attempt == run.attempt,
            _last_seen() < seen_before,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def requeue_stale_run(*, session: Session, run: StaleRun, seen_before: datetime, note: str) -> bool:
    """Put a stale run back to queued, not yet enqueued, with ``note`` as its error; False if it moved meanwhile.

    The attempt is kept: the next claim increments it, which fences off the silent worker
    should it wake up.
    """
    values = {"status": RunStatus.queued.value, "enqueued_at": None, "finished_at": None, "error": note}
    return _stale_update(session=session, run=run, seen_before=seen_before, values=values)


def fail_stale_run(*, session: Session, run: StaleRun, seen_before: datetime, error: str, now: datetime) -> bool:
    """Mark a stale run failed with the reason; False if it moved meanwhile."""
    values = {"status": RunStatus.failed.value, "finished_at": now, "error": error}
    return _stale_update(session=session, run=run, seen_before=seen_before, values=values)


def find_queued_runs_due(*, session: Session, waiting_since: datetime) -> list[PendingRun]:
    """Queued runs of experiments not being cancelled that have waited since before ``waiting_since``.

    That is: never enqueued and created before it (the API died between its commit and the
    enqueue) or put back by the reaper (attempt > 0, not yet enqueued); or enqueued before it
    (their task may have been lost by the broker, which the caller checks).
    """
    never_enqueued = and_(Run.enqueued_at.is_(None), or_(Run.created_at < waiting_since, Run.attempt > 0))
    rows = session.execute(
        select(Run.id, Run.experiment_id, Run.queue, Experiment.queue, Run.enqueued_at)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(
            Run.status == RunStatus.queued.value,
            Experiment.cancel_requested_at.is_(None),
            or_(never_enqueued, Run.enqueued_at < waiting_since),
        )
        .order_by(Run.created_at, Run.activation_index, Run.seed)
    ).all()
    return [
        PendingRun(
            run_id=run_id,
            experiment_id=experiment_id,
            queue=run_queue or experiment_queue or "cpu",
            enqueued_at=enqueued_at,
        )
        for run_id, experiment_id, run_queue, experiment_queue, enqueued_at in rows
    ]


def mark_queued_runs_enqueued(*, session: Session, run_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Record that the broker accepted a task for these runs (those still queued)."""
    if run_ids:
        session.execute(
            update(Run)
            .where(Run.id.in_(list(run_ids)), Run.status == RunStatus.queued.value)
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )


def try_lock_maintenance(*, connection: Connection) -> bool:
    """Take the maintenance lock for this connection's lifetime; False when another process holds it.

    PostgreSQL only (a session advisory lock, released when the connection ends even if the
    process dies); SQLite serves a single machine and always gets it.
    """
    if connection.dialect.name != "postgresql":
        return True
    held = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": MAINTENANCE_LOCK_KEY}).scalar()
    connection.commit()
    return bool(held)


def unlock_maintenance(*, connection: Connection) -> None:
    """Release the maintenance lock taken by ``try_lock_maintenance`` on this connection."""
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MAINTENANCE_LOCK_KEY})
    connection.commit()
