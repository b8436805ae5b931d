"""A run whose pool process the hard time limit killed is recorded timed_out with the reason, never left running."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery.exceptions import TimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.db import session_factory, session_scope
from app.models import Run
from app.runs.state_repository import claim_run, fence_run, lock_experiment_of_run, record_epoch_progress
from tests.worker.conftest import add_experiment
from worker import lifecycle
from worker.tasks import train_runs


def _claimed_run(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> uuid.UUID:
    monkeypatch.setattr(lifecycle, "session_scope", lambda: session_scope(engine))
    run_id = add_experiment(engine)[0]
    with session_scope(engine) as session:
        claim_run(session=session, run_id=run_id, worker_host="w1", task_id="t1", stale_after=timedelta(minutes=1))
    return run_id


def _run(engine: Engine, run_id: uuid.UUID) -> Run:
    with session_scope(engine) as session:
        return session.execute(select(Run).where(Run.id == run_id)).scalar_one()


def _hard_time_limit(run_id: uuid.UUID) -> None:
    """What Celery calls in the worker's main process at the hard time limit, before it kills the pool process."""
    train_runs.on_failure(TimeLimitExceeded(23), "t1", (), {"run_ids": [str(run_id)]}, None)


def test_the_failure_handler_records_a_hard_time_limit_as_timed_out_keeping_the_epochs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _claimed_run(engine, monkeypatch)
    with session_scope(engine) as session:
        record_epoch_progress(session=session, run_id=run_id, attempt=1, epochs_completed=2)

    _hard_time_limit(run_id)

    assert lifecycle.wait_for_ends_of_killed_tasks(timeout=60)
    run = _run(engine, run_id)
    assert (run.status, run.epochs_completed) == ("timed_out", 2)
    assert run.error is not None and "hard time limit" in run.error and "ACTLAB_TASK_SOFT_TIME_LIMIT" in run.error
    assert run.finished_at is not None


@pytest.fixture
def frozen_inside_its_epoch_write(database: Engine) -> Iterator[Session]:
    """The pool process's session, stopped inside an epoch write; closing it is the kill (the locks go with it)."""
    session = session_factory(database)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def test_the_end_of_a_hard_time_limit_waits_for_the_killed_process_s_locks_not_its_kill_for_them(
    database: Engine, monkeypatch: pytest.MonkeyPatch, frozen_inside_its_epoch_write: Session
) -> None:
    run_id = _claimed_run(database, monkeypatch)
    # The locks an epoch write takes first: the experiment's and the run's rows (PostgreSQL), the write lock (SQLite).
    frozen = frozen_inside_its_epoch_write
    lock_experiment_of_run(session=frozen, run_id=run_id)
    fence_run(session=frozen, run_id=run_id, attempt=1)

    # The kill comes only after the handler returns: it must return with the locks still held (it once waited
    # for them: forever on PostgreSQL, the busy timeout on SQLite, after which it left the run running).
    returned = threading.Event()
    handler = threading.Thread(target=lambda: (_hard_time_limit(run_id), returned.set()), daemon=True)
    handler.start()
    assert returned.wait(timeout=60), "the hard-time-limit handler waited for the locks of the process to be killed"
    assert _run(database, run_id).status == "running"

    frozen.rollback()
    frozen.close()
    assert lifecycle.wait_for_ends_of_killed_tasks(timeout=60)
    run = _run(database, run_id)
    assert (run.status, run.attempt, run.epochs_completed) == ("timed_out", 1, 0)
    assert run.error is not None and "hard time limit" in run.error
