"""A run whose pool process the hard time limit killed is recorded timed_out with the reason, never left running."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import TimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.db import session_scope
from app.models import Run
from app.runs.state_repository import claim_run, record_epoch_progress
from tests.worker.conftest import add_experiment
from worker import tasks
from worker.tasks import train_runs


def test_the_failure_handler_records_a_hard_time_limit_as_timed_out_keeping_the_epochs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "session_scope", lambda: session_scope(engine))
    run_id = add_experiment(engine)[0]
    with session_scope(engine) as session:
        claim_run(session=session, run_id=run_id, worker_host="w1", task_id="t1", stale_after=timedelta(minutes=1))
    with session_scope(engine) as session:
        record_epoch_progress(session=session, run_id=run_id, attempt=1, epochs_completed=2)

    # What Celery calls in the worker's main process once it has killed the stuck pool process.
    train_runs.on_failure(TimeLimitExceeded(23), "t1", (), {"run_ids": [str(run_id)]}, None)

    with session_scope(engine) as session:
        run = session.execute(select(Run).where(Run.id == run_id)).scalar_one()
    assert (run.status, run.epochs_completed) == ("timed_out", 2)
    assert run.error is not None and "hard time limit" in run.error and "ACTLAB_TASK_SOFT_TIME_LIMIT" in run.error
    assert run.finished_at is not None
