"""SQL that moves a run through its life cycle on the worker side: claim, heartbeat, finish.

Every write after the claim is fenced by the attempt number the claim returned: it updates
the run only while ``runs.attempt`` still equals that number, so a worker whose run was
taken over by a newer delivery (a stale writer) has its writes rejected with
:class:`StaleAttemptError` instead of overwriting the newer attempt's state.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from app.models import Experiment, Run, RunStatus
from app.models.status import FINISHED_RUN_STATUSES
from app.models.types import utc_now
from app.schemas import as_utc


class StaleAttemptError(RuntimeError):
    """A newer attempt owns the run: this writer's results are rejected and it must stop."""


@dataclass(frozen=True)
class ClaimedRun:
    """What a worker needs after claiming a run: ids, the attempt number that fences its writes, the spec."""

    run_id: uuid.UUID
    experiment_id: uuid.UUID
    attempt: int
    activation_index: int
    seed: int
    queue: str | None
    spec: dict[str, Any]
    epochs_completed: int
    # The run's cell (app.spec_factors): train it with run_spec(spec, cell_levels); 0 and None without factors.
    cell_index: int = 0
    cell_levels: dict[str, Any] | None = None


def claim_run(
    *,
    session: Session,
    run_id: uuid.UUID,
    worker_host: str,
    task_id: str | None,
    stale_after: timedelta,
    now: datetime | None = None,
) -> ClaimedRun | None:
    """Make this worker the run's owner and return the new attempt, or None when the run is not ours to start.

    A queued run is claimed. A running run is claimed only by the task that claimed it before
    (same ``task_id``: a broker redelivery after a lost worker, or a retry, so the earlier
    attempt is gone) or when its heartbeat is older than ``stale_after``; otherwise it is
    running elsewhere and this delivery is a duplicate. A finished or missing run is never claimed.
    """
    now = now or utc_now()
    if lock_experiment_of_run(session=session, run_id=run_id) is None:
        return None
    row = session.execute(
        select(Run, Experiment.spec, Experiment.queue)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.id == run_id)
        .with_for_update(of=Run)
    ).one_or_none()
    if row is None:
        return None
    run, spec, experiment_queue = row
    if run.status in FINISHED_RUN_STATUSES:
        return None
    same_task = task_id is not None and run.task_id == task_id
    if run.status == RunStatus.running and not same_task:
        heartbeat = as_utc(run.heartbeat_at or run.started_at)
        if heartbeat is not None and now - heartbeat < stale_after:
            return None
    previous_attempt, previous_status = run.attempt, run.status
    # Compare-and-set on (attempt, status): of two workers claiming at once, exactly one wins.
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt == previous_attempt, Run.status == previous_status)
        .values(
            attempt=previous_attempt + 1,
            status=RunStatus.running.value,
            worker_host=worker_host,
            task_id=task_id,
            started_at=run.started_at or now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    return _claimed_run(run, attempt=previous_attempt + 1, spec=spec, experiment_queue=experiment_queue)


def _claimed_run(run: Any, *, attempt: int, spec: dict[str, Any], experiment_queue: str | None) -> ClaimedRun:
    """The claim of a run (a Run, or a row with its columns) by ``attempt``."""
    return ClaimedRun(
        run_id=run.id,
        experiment_id=run.experiment_id,
        attempt=attempt,
        activation_index=run.activation_index,
        seed=run.seed,
        queue=run.queue or experiment_queue,
        spec=dict(spec),
        epochs_completed=run.epochs_completed,
        cell_index=run.cell_index,
        cell_levels=run.cell_levels,
    )


def claim_queued_runs(
    *,
    session: Session,
    run_ids: Sequence[uuid.UUID],
    worker_host: str,
    task_id: str | None,
    now: datetime | None = None,
) -> list[ClaimedRun]:
    """``claim_run`` of several queued runs of one experiment in one statement; the claims, in ``run_ids`` order.

    Only runs still queued are claimed (compare-and-set on the status, each its attempt plus one), so what
    ``claim_run`` would refuse is left out. Call it after ``lock_experiment_of_run`` in the same transaction:
    a stack claims its companions while the other worker processes wait for their own claims, so one
    statement here, instead of three per run, is what lets the next stack start.
    """
    if not run_ids:
        return []
    now = now or utc_now()
    claimed = session.execute(
        update(Run)
        .where(Run.id.in_(list(run_ids)), Run.status == RunStatus.queued.value)
        .values(
            attempt=Run.attempt + 1,
            status=RunStatus.running.value,
            worker_host=worker_host,
            task_id=task_id,
            started_at=func.coalesce(Run.started_at, now),
            heartbeat_at=now,
            finished_at=None,
            error=None,
        )
        .returning(
            Run.id,
            Run.experiment_id,
            Run.attempt,
            Run.activation_index,
            Run.seed,
            Run.queue,
            Run.epochs_completed,
            Run.cell_index,
            Run.cell_levels,
        )
        .execution_options(synchronize_session=False)
    ).all()
    if not claimed:
        return []
    spec, experiment_queue = session.execute(
        select(Experiment.spec, Experiment.queue).where(Experiment.id == claimed[0].experiment_id)
    ).one()
    by_id = {
        row.id: _claimed_run(row, attempt=row.attempt, spec=spec, experiment_queue=experiment_queue) for row in claimed
    }
    return [by_id[run_id] for run_id in run_ids if run_id in by_id]


def lock_experiment_of_run(*, session: Session, run_id: uuid.UUID) -> uuid.UUID | None:
    """Take the locks a run write needs, as the first statement of its transaction; returns the experiment id.

    PostgreSQL: lock the experiment row before any run row. The API locks the experiment
    first too (cancel, status refresh), so both sides take locks in one order and never
    deadlock. SQLite: a no-op write takes the database write lock now, waiting up to the busy
    timeout, instead of failing with "database is locked" when a read turns into a write later.
    """
    if session.get_bind().dialect.name == "sqlite":
        result = session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(attempt=Run.attempt)
            .returning(Run.experiment_id)
            .execution_options(synchronize_session=False)
        )
        return result.scalar_one_or_none()
    return session.execute(
        select(Experiment.id)
        .join(Run, Run.experiment_id == Experiment.id)
        .where(Run.id == run_id)
        .with_for_update(of=Experiment)
    ).scalar_one_or_none()


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _fenced_update(*, session: Session, run_id: uuid.UUID, attempt: int, values: dict[str, Any]) -> None:
    """Update the running run only while ``attempt`` still owns it; otherwise raise StaleAttemptError."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt == attempt, Run.status == RunStatus.running.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        raise StaleAttemptError(f"run {run_id}: attempt {attempt} no longer owns the run")


def fence_run(*, session: Session, run_id: uuid.UUID, attempt: int, now: datetime | None = None) -> None:
    """Check that ``attempt`` still owns the run and refresh its heartbeat, locking the row for this transaction.

    Call it first in a transaction that writes the run's results: the row lock (PostgreSQL) or
    write lock (SQLite) keeps a concurrent claim from slipping in before the commit.
    """
    _fenced_update(session=session, run_id=run_id, attempt=attempt, values={"heartbeat_at": now or utc_now()})


def record_run_start(
    *,
    session: Session,
    run_id: uuid.UUID,
    attempt: int,
    device: str,
    init_scheme: str,
    parameter_count: int,
    activation_placement: str,
    training_path: str,
    time_gradients: str | None = None,
    stack_id: str | None = None,
    stack_size: int | None = None,
    stacking_reason: str | None = None,
) -> None:
    """Store where and how the run trains, as the engine reports it before the first epoch.

    ``stack_id`` and ``stack_size`` name the stack of a stacked run (NULL when unstacked);
    ``stacking_reason`` says why it trained stacked or alone (runs.stacking_reason).
    """
    _fenced_update(
        session=session,
        run_id=run_id,
        attempt=attempt,
        values={
            "device": device,
            "init_scheme": init_scheme,
            "parameter_count": parameter_count,
            "activation_placement": activation_placement,
            "training_path": training_path,
            "time_gradients": time_gradients,
            "stack_id": stack_id,
            "stack_size": stack_size,
            "stacking_reason": stacking_reason,
            "heartbeat_at": utc_now(),
        },
    )


def record_epoch_progress_of_runs(
    *, session: Session, runs: Sequence[tuple[uuid.UUID, int]], epochs_completed: int
) -> list[uuid.UUID]:
    """``record_epoch_progress`` of several (run id, attempt) at the same epoch in one statement.

    The runs their attempts still own are updated (and locked for this transaction); the others are
    returned, in the given order, for the caller to stop, as StaleAttemptError would have told it.
    """
    if not runs:
        return []
    owned_by_attempt = (tuple_(Run.id, Run.attempt).in_(list(runs)), Run.status == RunStatus.running.value)
    result = session.execute(
        update(Run)
        .where(*owned_by_attempt)
        .values(epochs_completed=epochs_completed, heartbeat_at=utc_now())
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) == len(runs):
        return []
    owned = set(session.execute(select(Run.id).where(*owned_by_attempt)).scalars())
    return [run_id for run_id, _ in runs if run_id not in owned]


def record_epoch_progress(*, session: Session, run_id: uuid.UUID, attempt: int, epochs_completed: int) -> None:
    """Store the number of finished epochs and refresh the heartbeat."""
    _fenced_update(
        session=session,
        run_id=run_id,
        attempt=attempt,
        values={"epochs_completed": epochs_completed, "heartbeat_at": utc_now()},
    )


def finish_run(
    *,
    session: Session,
    run_id: uuid.UUID,
    attempt: int,
    status: RunStatus,
    epochs_completed: int | None = None,
    diverged_epoch: int | None = None,
    training_seconds: float | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    """Move the run to a finished status with its outcome; fenced like every other write."""
    if status not in FINISHED_RUN_STATUSES:
        raise ValueError(f"finish_run needs a finished status, one of {sorted(FINISHED_RUN_STATUSES)}, got {status!r}")
    now = now or utc_now()
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": now,
        "heartbeat_at": now,
        "diverged_epoch": diverged_epoch,
        "error": error,
    }
    if epochs_completed is not None:
        values["epochs_completed"] = epochs_completed
    if training_seconds is not None:
        values["training_seconds"] = training_seconds
    _fenced_update(session=session, run_id=run_id, attempt=attempt, values=values)


def cancel_requested(*, session: Session, experiment_id: uuid.UUID) -> bool:
    """True once someone asked to cancel the experiment."""
    requested = session.execute(
        select(Experiment.cancel_requested_at).where(Experiment.id == experiment_id)
    ).scalar_one_or_none()
    return requested is not None


def fail_unfinished_runs(
    *,
    session: Session,
    run_ids: list[uuid.UUID],
    error: str,
    now: datetime | None = None,
    status: RunStatus = RunStatus.failed,
) -> list[uuid.UUID]:
    """Mark the runs among ``run_ids`` that have not finished as failed (or ``status``); returns their experiments' ids.

    Used when a task gives up (retries exhausted, or killed by the hard time limit): whatever
    attempt held the run is over.
    """
    if status not in FINISHED_RUN_STATUSES:
        raise ValueError(f"fail_unfinished_runs needs a finished status, got {status!r}")
    if not run_ids:
        return []
    now = now or utc_now()
    unfinished = [status.value for status in (RunStatus.queued, RunStatus.running)]
    experiment_ids = (
        session.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status.in_(unfinished))
            .values(status=status.value, error=error, finished_at=now)
            .returning(Run.experiment_id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    return sorted(set(experiment_ids))


def requeue_orphaned_runs(*, session: Session) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """Put every running run back to queued; return every queued run as (run id, experiment id, queue), oldest first.

    Only for a start of the embedded service, when no worker can be running: its broker is
    rebuilt from the database, the source of truth.
    """
    session.execute(
        update(Run)
        .where(Run.status == RunStatus.running.value)
        .values(status=RunStatus.queued.value)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(Run.id, Run.experiment_id, Run.queue, Experiment.queue)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Run.status == RunStatus.queued.value)
        .order_by(Run.created_at, Run.activation_index, Run.seed)
    ).all()
    return [
        (run_id, experiment_id, run_queue or experiment_queue or "cpu")
        for run_id, experiment_id, run_queue, experiment_queue in rows
    ]
