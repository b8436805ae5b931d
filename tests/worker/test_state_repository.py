"""Claiming runs, fencing stale attempts, and the embedded service's requeue, on SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.db import session_scope
from app.models import Run, RunStatus
from app.models.types import utc_now
from app.runs.state_repository import (
    StaleAttemptError,
    claim_queued_runs,
    claim_run,
    fail_unfinished_runs,
    finish_run,
    record_epoch_progress,
    record_epoch_progress_of_runs,
    requeue_orphaned_runs,
)
from tests.worker.conftest import TINY_SPEC, add_experiment

FRESH = timedelta(minutes=10)


@pytest.fixture
def engine(database: Engine) -> Engine:
    """These tests run on SQLite and on PostgreSQL."""
    return database


def _claim(engine: Engine, run_id, *, task_id: str = "task-1", stale_after: timedelta = FRESH, host: str = "w1"):
    with session_scope(engine) as session:
        return claim_run(session=session, run_id=run_id, worker_host=host, task_id=task_id, stale_after=stale_after)


def _run(engine: Engine, run_id) -> Run:
    with session_scope(engine) as session:
        return session.execute(select(Run).where(Run.id == run_id)).scalar_one()


def test_claiming_a_queued_run_starts_attempt_one(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    claimed = _claim(engine, run_id, host="gpu-box-7")
    assert claimed is not None
    assert claimed.attempt == 1
    assert claimed.spec["dataset"]["name"] == "spirals"
    run = _run(engine, run_id)
    assert (run.status, run.attempt, run.worker_host, run.task_id) == ("running", 1, "gpu-box-7", "task-1")
    assert run.started_at is not None and run.heartbeat_at is not None


def test_claiming_queued_runs_at_once_claims_only_those_still_queued(engine: Engine) -> None:
    run_ids = add_experiment(engine, {**TINY_SPEC, "seeds": [0, 1, 2]})
    assert _claim(engine, run_ids[1], task_id="elsewhere") is not None
    with session_scope(engine) as session:
        finish_run(session=session, run_id=run_ids[1], attempt=1, status=RunStatus.succeeded)
    assert _claim(engine, run_ids[2], task_id="elsewhere") is not None
    wanted = [run_ids[3], run_ids[1], run_ids[2], run_ids[0]]
    with session_scope(engine) as session:
        claims = claim_queued_runs(session=session, run_ids=wanted, worker_host="w2", task_id="stack-task")
    # The finished run and the one running elsewhere are left alone; the claims come in the order asked.
    assert [claim.run_id for claim in claims] == [run_ids[3], run_ids[0]]
    assert all(claim.attempt == 1 and claim.spec["dataset"]["name"] == "spirals" for claim in claims)
    assert [(claim.activation_index, claim.seed) for claim in claims] == [(1, 0), (0, 0)]
    runs = [_run(engine, run_id) for run_id in run_ids[:4]]
    assert [(run.status, run.attempt, run.task_id) for run in runs] == [
        ("running", 1, "stack-task"),
        ("succeeded", 1, "elsewhere"),
        ("running", 1, "elsewhere"),
        ("running", 1, "stack-task"),
    ]
    assert runs[0].heartbeat_at is not None and runs[3].heartbeat_at is not None
    # Claimed once: a second batch over the same runs claims nothing.
    with session_scope(engine) as session:
        assert claim_queued_runs(session=session, run_ids=wanted, worker_host="w3", task_id="late") == []


def test_a_duplicate_delivery_of_a_run_running_elsewhere_is_not_claimed(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    assert _claim(engine, run_id, task_id="task-1") is not None
    assert _claim(engine, run_id, task_id="another-task") is None
    assert _run(engine, run_id).attempt == 1


def test_a_redelivery_of_the_same_task_takes_over_with_the_next_attempt(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    _claim(engine, run_id, task_id="task-1", host="crashed")
    claimed = _claim(engine, run_id, task_id="task-1", host="survivor")
    assert claimed is not None and claimed.attempt == 2
    run = _run(engine, run_id)
    assert (run.attempt, run.worker_host) == (2, "survivor")


def test_a_run_with_a_stale_heartbeat_is_taken_over_by_any_delivery(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    _claim(engine, run_id, task_id="task-1")
    claimed = _claim(engine, run_id, task_id="task-2", stale_after=timedelta(seconds=-1))
    assert claimed is not None and claimed.attempt == 2


@pytest.mark.parametrize("status", [RunStatus.succeeded, RunStatus.cancelled, RunStatus.failed])
def test_a_finished_run_is_never_claimed_again(engine: Engine, status: RunStatus) -> None:
    run_id = add_experiment(engine)[0]
    claimed = _claim(engine, run_id)
    assert claimed is not None
    with session_scope(engine) as session:
        finish_run(session=session, run_id=run_id, attempt=claimed.attempt, status=status, epochs_completed=3)
    assert _claim(engine, run_id, task_id="task-1", stale_after=timedelta(seconds=-1)) is None
    run = _run(engine, run_id)
    assert (run.status, run.attempt, run.epochs_completed) == (status.value, 1, 3)
    assert run.finished_at is not None


def test_writes_of_a_stale_attempt_are_rejected(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    first = _claim(engine, run_id, task_id="task-1")
    second = _claim(engine, run_id, task_id="task-1")
    assert first is not None and second is not None
    with pytest.raises(StaleAttemptError), session_scope(engine) as session:
        record_epoch_progress(session=session, run_id=run_id, attempt=first.attempt, epochs_completed=2)
    with pytest.raises(StaleAttemptError), session_scope(engine) as session:
        finish_run(session=session, run_id=run_id, attempt=first.attempt, status=RunStatus.succeeded)
    with session_scope(engine) as session:
        record_epoch_progress(session=session, run_id=run_id, attempt=second.attempt, epochs_completed=1)
    run = _run(engine, run_id)
    assert (run.status, run.epochs_completed) == ("running", 1)


def test_the_progress_of_a_stack_is_written_in_one_statement_and_names_the_runs_taken_over(engine: Engine) -> None:
    run_ids = add_experiment(engine)
    claims = [_claim(engine, run_id) for run_id in run_ids[:3]]
    assert all(claim is not None for claim in claims)
    # The second run is taken over by a newer attempt; the third is cancelled (no longer running).
    newer = _claim(engine, run_ids[1], task_id="task-2", stale_after=timedelta(seconds=-1))
    assert newer is not None and newer.attempt == 2
    with session_scope(engine) as session:
        finish_run(session=session, run_id=run_ids[2], attempt=1, status=RunStatus.cancelled, epochs_completed=1)
    before = _run(engine, run_ids[0]).heartbeat_at
    with session_scope(engine) as session:
        stale = record_epoch_progress_of_runs(
            session=session, runs=[(run_id, 1) for run_id in run_ids[:3]], epochs_completed=2
        )
    assert stale == [run_ids[1], run_ids[2]]
    first = _run(engine, run_ids[0])
    assert (first.status, first.epochs_completed) == ("running", 2)
    assert before is None or first.heartbeat_at >= before
    # The others keep what their owners wrote.
    assert (_run(engine, run_ids[1]).attempt, _run(engine, run_ids[1]).epochs_completed) == (2, 0)
    assert (_run(engine, run_ids[2]).status, _run(engine, run_ids[2]).epochs_completed) == ("cancelled", 1)
    with session_scope(engine) as session:
        assert record_epoch_progress_of_runs(session=session, runs=[(run_ids[1], 2)], epochs_completed=1) == []
        assert record_epoch_progress_of_runs(session=session, runs=[], epochs_completed=1) == []
    assert _run(engine, run_ids[1]).epochs_completed == 1


def test_finish_run_refuses_an_unfinished_status(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    claimed = _claim(engine, run_id)
    assert claimed is not None
    with pytest.raises(ValueError, match="finished status"), session_scope(engine) as session:
        finish_run(session=session, run_id=run_id, attempt=claimed.attempt, status=RunStatus.running)


def test_requeue_orphaned_runs_puts_running_runs_back_and_lists_every_queued_run(engine: Engine) -> None:
    first, second, third, fourth = add_experiment(engine)
    _claim(engine, first)
    done = _claim(engine, second)
    assert done is not None
    with session_scope(engine) as session:
        finish_run(session=session, run_id=second, attempt=done.attempt, status=RunStatus.succeeded)
    with session_scope(engine) as session:
        pending = requeue_orphaned_runs(session=session)
    assert {run_id for run_id, _, _ in pending} == {first, third, fourth}
    assert {queue for _, _, queue in pending} == {"cpu"}
    assert _run(engine, first).status == "queued"
    assert _run(engine, second).status == "succeeded"


def test_fail_unfinished_runs_leaves_finished_runs_alone(engine: Engine) -> None:
    first, second, *_ = add_experiment(engine)
    claimed = _claim(engine, second)
    assert claimed is not None
    with session_scope(engine) as session:
        finish_run(session=session, run_id=second, attempt=claimed.attempt, status=RunStatus.succeeded)
    with session_scope(engine) as session:
        experiments = fail_unfinished_runs(session=session, run_ids=[first, second], error="gave up", now=utc_now())
    assert len(experiments) == 1
    assert (_run(engine, first).status, _run(engine, first).error) == ("failed", "gave up")
    assert _run(engine, second).status == "succeeded"
