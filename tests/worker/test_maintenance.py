"""The reaper and the reconciler on SQLite and PostgreSQL, and reading the runs a broker holds."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import session_scope
from app.models import Experiment, Run
from app.models.types import utc_now
from app.runs.maintenance_repository import MAINTENANCE_LOCK_KEY
from app.runs.state_repository import StaleAttemptError, claim_run, record_epoch_progress
from tests.worker.conftest import add_experiment
from worker.celery_app import TRAIN_RUNS_TASK, configure
from worker.maintenance import (
    MaintenanceLoop,
    MaintenanceReport,
    broker_run_ids,
    reap_stale_runs,
    reconcile_queued_runs,
    run_ids_in_message,
    run_maintenance,
)

SETTINGS = Settings(run_stale_seconds=60, run_heartbeat_seconds=5, queued_grace_seconds=30, task_max_retries=2)
LATER = timedelta(minutes=5)


@pytest.fixture
def engine(database: Engine) -> Engine:
    """These tests run on SQLite and on PostgreSQL."""
    return database


class RecordingEnqueuer:
    """Stands in for the broker: records what would be sent, or refuses."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.sent: list[tuple[list[uuid.UUID], str]] = []
        self.refuse = refuse

    def __call__(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        if self.refuse:
            raise ConnectionError("broker unreachable")
        self.sent.append((list(run_ids), queue))

    @property
    def run_ids(self) -> list[uuid.UUID]:
        return [run_id for run_ids, _ in self.sent for run_id in run_ids]


def _claim(engine: Engine, run_id: uuid.UUID, *, task_id: str = "task-1") -> int:
    with session_scope(engine) as session:
        claimed = claim_run(
            session=session, run_id=run_id, worker_host="w1", task_id=task_id, stale_after=timedelta(minutes=10)
        )
    assert claimed is not None
    return claimed.attempt


def _run(engine: Engine, run_id: uuid.UUID) -> Run:
    with session_scope(engine) as session:
        return session.execute(select(Run).where(Run.id == run_id)).scalar_one()


def _experiment_status(engine: Engine, run_id: uuid.UUID) -> str:
    with session_scope(engine) as session:
        return str(
            session.execute(
                select(Experiment.status).join(Run, Run.experiment_id == Experiment.id).where(Run.id == run_id)
            ).scalar_one()
        )


def _reap(engine: Engine, now: datetime, settings: Settings = SETTINGS) -> Any:
    with session_scope(engine) as session:
        return reap_stale_runs(session=session, now=now, settings=settings)


def _reconcile(
    engine: Engine, enqueue: RecordingEnqueuer, now: datetime, held: frozenset[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    with session_scope(engine) as session:
        return reconcile_queued_runs(
            session=session, enqueue=enqueue, now=now, settings=SETTINGS, broker_run_ids=lambda: held
        )


def _mark_enqueued(engine: Engine, run_ids: list[uuid.UUID], at: datetime) -> None:
    with session_scope(engine) as session:
        session.execute(update(Run).where(Run.id.in_(run_ids)).values(enqueued_at=at))


def test_a_run_whose_heartbeat_went_stale_is_requeued_then_sent_and_its_silent_worker_is_fenced(
    engine: Engine,
) -> None:
    run_id, *others = add_experiment(engine)
    _mark_enqueued(engine, others, utc_now())
    assert _claim(engine, run_id) == 1
    later = utc_now() + LATER

    outcome = _reap(engine, later)
    assert (outcome.requeued, outcome.failed) == ([run_id], [])
    run = _run(engine, run_id)
    assert (run.status, run.attempt, run.enqueued_at) == ("queued", 1, None)
    assert run.error is not None and "no heartbeat for more than 60 s" in run.error and "w1" in run.error
    assert _experiment_status(engine, run_id) == "queued"

    enqueue = RecordingEnqueuer()
    assert _reconcile(engine, enqueue, later, held=frozenset(others)) == [run_id]
    assert enqueue.sent == [([run_id], "cpu")]
    assert _run(engine, run_id).enqueued_at is not None

    # The next delivery takes the run with the next attempt; the silent worker's writes are refused.
    assert _claim(engine, run_id, task_id="task-2") == 2
    with pytest.raises(StaleAttemptError), session_scope(engine) as session:
        record_epoch_progress(session=session, run_id=run_id, attempt=1, epochs_completed=3)
    assert _run(engine, run_id).error is None


def test_a_run_with_a_fresh_heartbeat_is_left_alone(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    _claim(engine, run_id)
    outcome = _reap(engine, utc_now() + timedelta(seconds=30))
    assert (outcome.requeued, outcome.failed) == ([], [])
    assert _run(engine, run_id).status == "running"


def test_a_stale_run_that_used_its_last_attempt_is_failed_with_the_reason(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    for task in ("task-1", "task-1", "task-1"):
        _claim(engine, run_id, task_id=task)
    assert _run(engine, run_id).attempt == 3  # task_max_retries=2: three attempts in all

    outcome = _reap(engine, utc_now() + LATER)
    assert (outcome.requeued, outcome.failed) == ([], [run_id])
    run = _run(engine, run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error is not None
    assert "ACTLAB_RUN_STALE_SECONDS" in run.error and "all 3 attempts" in run.error
    assert _experiment_status(engine, run_id) == "running"  # the other three runs are still queued


def test_the_reconciler_sends_runs_never_enqueued_once_they_waited_the_grace_period(engine: Engine) -> None:
    run_ids = add_experiment(engine)
    enqueue = RecordingEnqueuer()
    # Just committed: the API may be about to enqueue them.
    assert _reconcile(engine, enqueue, utc_now() + timedelta(seconds=5)) == []
    later = utc_now() + LATER
    assert sorted(_reconcile(engine, enqueue, later)) == sorted(run_ids)
    assert all(_run(engine, run_id).enqueued_at is not None for run_id in run_ids)
    # Sent once: the next pass finds them enqueued and, with the broker unreadable, leaves them.
    assert _reconcile(engine, enqueue, later + timedelta(seconds=1)) == []


def test_enqueued_runs_are_sent_again_only_when_the_broker_no_longer_holds_their_task(engine: Engine) -> None:
    first, second, *rest = add_experiment(engine)
    long_ago = utc_now() - LATER
    _mark_enqueued(engine, [first, second, *rest], long_ago)
    now = utc_now()
    enqueue = RecordingEnqueuer()
    held = frozenset([second, *rest])
    assert _reconcile(engine, enqueue, now, held=held) == [first]
    # A broker that cannot be read: nothing is sent on a guess.
    _mark_enqueued(engine, [first], long_ago)
    assert _reconcile(engine, enqueue, now, held=None) == []


def test_runs_of_an_experiment_being_cancelled_are_not_sent(engine: Engine) -> None:
    run_ids = add_experiment(engine)
    with session_scope(engine) as session:
        session.execute(
            update(Experiment)
            .where(Experiment.id == select(Run.experiment_id).where(Run.id == run_ids[0]).scalar_subquery())
            .values(cancel_requested_at=utc_now())
        )
    assert _reconcile(engine, RecordingEnqueuer(), utc_now() + LATER) == []


def test_a_broker_that_refuses_leaves_the_runs_for_the_next_pass(engine: Engine) -> None:
    run_ids = add_experiment(engine)
    assert _reconcile(engine, RecordingEnqueuer(refuse=True), utc_now() + LATER) == []
    assert all(_run(engine, run_id).enqueued_at is None for run_id in run_ids)
    assert len(_reconcile(engine, RecordingEnqueuer(), utc_now() + LATER)) == len(run_ids)


def test_a_pass_reaps_then_sends_the_reaped_run_at_once(engine: Engine) -> None:
    run_id, *others = add_experiment(engine)
    _mark_enqueued(engine, others, utc_now())
    _claim(engine, run_id)
    enqueue = RecordingEnqueuer()
    later = utc_now() + LATER
    report = run_maintenance(
        settings=SETTINGS, engine=engine, enqueue=enqueue, broker_lookup=lambda: frozenset(others), now=lambda: later
    )
    assert report == MaintenanceReport(requeued_stale=[run_id], failed_stale=[], enqueued=[run_id])
    assert "1 stale run(s) requeued" in report.summary()


@pytest.mark.integration
def test_only_one_pass_runs_at_a_time_on_postgresql(postgres_worker_url: str) -> None:
    from app.db import make_engine

    engine = make_engine(postgres_worker_url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MAINTENANCE_LOCK_KEY})
            report = run_maintenance(settings=SETTINGS, engine=engine, enqueue=RecordingEnqueuer())
            assert report.skipped
            assert "another maintenance pass" in report.summary()
            holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MAINTENANCE_LOCK_KEY})
        assert not run_maintenance(settings=SETTINGS, engine=engine, enqueue=RecordingEnqueuer()).skipped
    finally:
        engine.dispose()


def _publish(settings: Settings, run_ids: list[uuid.UUID], queue: str = "cpu") -> None:
    """Send real training-task messages the way the API does, to the broker of ``settings``."""
    producer = Celery("test-producer")
    configure(producer, settings)
    for run_id in run_ids:
        producer.send_task(TRAIN_RUNS_TASK, kwargs={"run_ids": [str(run_id)]}, queue=queue)
    producer.close()


def test_the_runs_held_by_the_embedded_folder_broker_are_read_from_its_messages(tmp_path: Path) -> None:
    settings = Settings(broker_url="filesystem://", broker_folder=tmp_path / "broker")
    run_ids = [uuid.uuid4(), uuid.uuid4()]
    _publish(settings, run_ids[:1], "cpu")
    _publish(settings, run_ids[1:], "gpu")
    assert broker_run_ids(settings) == frozenset(run_ids)


@pytest.mark.integration
def test_the_runs_held_by_redis_are_read_from_its_queues() -> None:
    import redis

    from tests.integration.conftest import REDIS_URL

    prefix = f"actlab-test-maintenance-{uuid.uuid4().hex[:8]}:"
    settings = Settings(broker_url=REDIS_URL, broker_key_prefix=prefix)
    run_ids = [uuid.uuid4(), uuid.uuid4()]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        _publish(settings, run_ids[:1], "cpu")
        _publish(settings, run_ids[1:], "gpu")
        assert broker_run_ids(settings) == frozenset(run_ids)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_an_unreadable_broker_is_reported_as_unknown_not_as_empty() -> None:
    assert broker_run_ids(Settings(broker_url="redis://127.0.0.1:1/0")) is None
    assert broker_run_ids(Settings(broker_url="amqp://guest@127.0.0.1//")) is None


def test_messages_of_other_tasks_name_no_runs() -> None:
    message = {"headers": {"task": "celery.ping", "kwargsrepr": str(uuid.uuid4())}, "body": "", "properties": {}}
    assert run_ids_in_message(message) == set()


def test_the_loop_passes_at_once_and_keeps_passing_until_stopped() -> None:
    passes: list[int] = []

    def one_pass() -> MaintenanceReport:
        passes.append(1)
        if len(passes) == 1:
            raise ConnectionError("database unreachable")  # a failed pass does not end the loop
        return MaintenanceReport()

    loop = MaintenanceLoop(interval=0.01, run_pass=one_pass)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while len(passes) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    assert len(passes) >= 3
