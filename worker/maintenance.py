"""Self-healing passes over the database, the source of truth: a reaper and a reconciler.

- The reaper finds running runs whose heartbeat is older than ``run_stale_seconds`` (their
  worker died, froze, was killed by the hard time limit, or lost the database) and puts them
  back to queued, or fails them with the reason once they used every attempt.
- The reconciler sends a task for every queued run that has none: never enqueued (the API
  died between its commit and the enqueue, or the broker refused it), put back by the
  reaper, or enqueued but no longer held by the broker (a Redis restart without persistence).

Both read the broker's tasks here (``broker_run_ids``); the stacked runner deletes the embedded
broker's tasks of runs a stack took through ``discard_tasks_of_runs``.

A pass runs in every worker's main process every ``maintenance_interval_seconds`` (a
PostgreSQL advisory lock lets one run at a time) and once per ``actlab maintain``. Both
halves are idempotent; a duplicate task is harmless because claims are fenced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from celery.signals import worker_process_init, worker_ready, worker_shutdown
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import make_engine, session_scope
from app.models.types import utc_now
from app.runs.maintenance_repository import (
    PendingRun,
    StaleRun,
    fail_stale_run,
    find_queued_runs_due,
    find_stale_runs,
    mark_queued_runs_enqueued,
    requeue_stale_run,
    try_lock_maintenance,
    unlock_maintenance,
)
from app.schemas import as_utc
from worker.celery_app import QUEUES, TRAIN_RUNS_TASK, embedded_broker_folders, is_embedded_broker
from worker.lifecycle import max_attempts

logger = logging.getLogger(__name__)

_UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RunEnqueuer(Protocol):
    """Sends one training task per run id to a queue (``app.dispatch.enqueue_runs`` in production)."""

    def __call__(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        """Send the tasks; raise if the broker refuses them."""
        ...


BrokerLookup = Callable[[], frozenset[uuid.UUID] | None]


@dataclass(frozen=True)
class StaleRunsOutcome:
    """What the reaper did: runs put back to queued, and runs failed after their last attempt."""

    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True)
class MaintenanceReport:
    """What one maintenance pass did; ``skipped`` when another process held the pass lock."""

    requeued_stale: list[uuid.UUID] = field(default_factory=list)
    failed_stale: list[uuid.UUID] = field(default_factory=list)
    enqueued: list[uuid.UUID] = field(default_factory=list)
    skipped: bool = False

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.skipped:
            return "skipped: another maintenance pass holds the lock"
        return (
            f"{len(self.requeued_stale)} stale run(s) requeued, {len(self.failed_stale)} stale run(s) failed after "
            f"their last attempt, {len(self.enqueued)} queued run(s) sent to the broker"
        )


def _describe(run: StaleRun) -> str:
    seen = as_utc(run.last_seen_at)
    moment = seen.strftime("%Y-%m-%d %H:%M:%S UTC") if seen is not None else "never"
    return f"attempt {run.attempt} on {run.worker_host or 'an unknown worker'} last beat at {moment}"


def reap_stale_runs(*, session: Session, now: datetime, settings: Settings) -> StaleRunsOutcome:
    """Requeue running runs whose heartbeat is older than run_stale_seconds, or fail those out of attempts.

    A requeued run is left not enqueued; ``reconcile_queued_runs`` sends its task. The caller commits.
    """
    from app.experiments.repository import get_experiment
    from app.experiments.service import refresh_experiment_status

    stale_seconds = settings.run_stale_seconds
    seen_before = now - timedelta(seconds=stale_seconds)
    by_experiment: dict[uuid.UUID, list[StaleRun]] = {}
    for run in find_stale_runs(session=session, seen_before=seen_before):
        by_experiment.setdefault(run.experiment_id, []).append(run)
    requeued: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
    limit = max_attempts(settings)
    for experiment_id in sorted(by_experiment):
        # The experiment row first, as every writer of runs does: one lock order, no deadlock.
        get_experiment(session=session, experiment_id=experiment_id, for_update=True)
        for run in by_experiment[experiment_id]:
            if run.attempt >= limit:
                reason = (
                    f"gave up: no heartbeat for more than {stale_seconds:g} s ({_describe(run)}; setting "
                    f"ACTLAB_RUN_STALE_SECONDS) and the run has used all {limit} attempts (setting "
                    "ACTLAB_TASK_MAX_RETRIES)"
                )
                if fail_stale_run(session=session, run=run, seen_before=seen_before, error=reason, now=now):
                    failed.append(run.run_id)
                    logger.warning("run %s failed: %s", run.run_id, reason, extra={"run_id": str(run.run_id)})
            else:
                note = (
                    f"requeued: no heartbeat for more than {stale_seconds:g} s ({_describe(run)}); "
                    "the next attempt resumes from the last finished epoch"
                )
                if requeue_stale_run(session=session, run=run, seen_before=seen_before, note=note):
                    requeued.append(run.run_id)
                    logger.warning("run %s %s", run.run_id, note, extra={"run_id": str(run.run_id)})
        refresh_experiment_status(session=session, experiment_id=experiment_id)
    return StaleRunsOutcome(requeued=requeued, failed=failed)


def reconcile_queued_runs(
    *,
    session: Session,
    enqueue: RunEnqueuer,
    now: datetime,
    settings: Settings,
    broker_run_ids: BrokerLookup | None = None,
) -> list[uuid.UUID]:
    """Send a task for each queued run that waited queued_grace_seconds without one; returns the runs sent.

    Runs never enqueued are always sent. Runs enqueued earlier are sent again only when
    ``broker_run_ids`` can list the runs the broker holds and theirs is not among them; when
    the broker cannot be inspected they are left alone. The caller commits.
    """
    waiting_since = now - timedelta(seconds=settings.queued_grace_seconds)
    due = find_queued_runs_due(session=session, waiting_since=waiting_since)
    if not due:
        return []
    held: frozenset[uuid.UUID] | None = None
    if broker_run_ids is not None and any(run.enqueued_at is not None for run in due):
        held = broker_run_ids()
    missing = [run for run in due if run.enqueued_at is None or (held is not None and run.run_id not in held)]
    by_queue: dict[str, list[PendingRun]] = {}
    for run in missing:
        by_queue.setdefault(run.queue, []).append(run)
    sent: list[PendingRun] = []
    for queue, runs in by_queue.items():
        try:
            enqueue(run_ids=[run.run_id for run in runs], queue=queue)
        except Exception as error:
            # The next pass tries again; the broker may be restarting.
            logger.warning("could not enqueue %d queued run(s) on %s: %s", len(runs), queue, error)
            continue
        sent.extend(runs)
    # Marked once every queue's tasks are sent: the write (its row locks; SQLite's write lock) never waits on a broker.
    if sent:
        mark_queued_runs_enqueued(session=session, run_ids=[run.run_id for run in sent], now=now)
    for run in sent:
        why = "never enqueued" if run.enqueued_at is None else "its task is no longer in the broker"
        logger.info(
            "run %s sent to queue %s again (%s)",
            run.run_id,
            run.queue,
            why,
            extra={"run_id": str(run.run_id), "experiment_id": str(run.experiment_id)},
        )
    return [run.run_id for run in sent]


def run_ids_in_message(message: Any) -> set[uuid.UUID]:
    """Run ids named by a training task's broker message (a kombu JSON envelope, as bytes, text or dict)."""
    if isinstance(message, bytes | str):
        message = json.loads(message)
    if not isinstance(message, dict):
        return set()
    headers = message.get("headers") or {}
    if headers.get("task") not in (None, TRAIN_RUNS_TASK):
        return set()
    body = message.get("body") or ""
    if (message.get("properties") or {}).get("body_encoding") == "base64" and isinstance(body, str):
        body = base64.b64decode(body).decode("utf-8", "replace")
    text = f"{body} {headers.get('kwargsrepr') or ''}".lower()
    return {uuid.UUID(match) for match in _UUID_PATTERN.findall(text)}


def _redis_run_ids(settings: Settings) -> frozenset[uuid.UUID]:
    import redis
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    prefix = settings.broker_key_prefix
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=10, socket_connect_timeout=5)
    found: set[uuid.UUID] = set()
    try:
        # The waiting messages first, then the delivered-but-unacknowledged ones: a message moving
        # from the list to the unacked hash between the two reads is still seen in one of them.
        for queue in QUEUES:
            for priority in PRIORITY_STEPS:
                key = f"{queue}{Channel.sep}{priority}" if priority else queue
                for raw in client.lrange(f"{prefix}{key}", 0, -1):
                    found |= run_ids_in_message(raw)
        for raw in client.hvals(f"{prefix}{Channel.unacked_key}"):
            entry = json.loads(raw)
            found |= run_ids_in_message(entry[0] if isinstance(entry, list) and entry else entry)
    finally:
        client.close()
    return frozenset(found)


def _folder_run_ids(folder: Path) -> frozenset[uuid.UUID]:
    found: set[uuid.UUID] = set()
    for path in folder.glob("*.msg"):
        with contextlib.suppress(OSError, ValueError):
            found |= run_ids_in_message(path.read_bytes())
    return frozenset(found)


def broker_run_ids(settings: Settings) -> frozenset[uuid.UUID] | None:
    """The run ids of every training task the broker holds (waiting or delivered), or None if it cannot be read.

    Redis (the lists of the cpu and gpu queues and the unacknowledged hash) and the embedded
    folder broker (its message files; a message a worker already took is not seen, which
    only makes a duplicate task possible) can be read; other brokers cannot.
    """
    try:
        if is_embedded_broker(settings.broker_url):
            return _folder_run_ids(embedded_broker_folders(settings.broker_folder)["messages"])
        if settings.broker_url.startswith(("redis://", "rediss://")):
            return _redis_run_ids(settings)
    except Exception as error:
        logger.warning("could not list the tasks held by the broker: %s", error)
    return None


def discard_tasks_of_runs(*, run_ids: set[uuid.UUID], settings: Settings) -> int:
    """Embedded broker: delete the waiting tasks that name only runs of ``run_ids``; returns how many.

    The folder broker hands a worker process a task only every ``broker_polling_interval`` seconds,
    so the tasks of runs a stack claimed would each cost a look before the next experiment's tasks
    are reached. Deleting them is safe: those runs are running under the claiming task, which takes
    them back if it is delivered again, and a run that is put back to queued gets a new task from the
    reconciler. Redis hands out tasks without polling: there they are simply
    delivered and skipped.
    """
    if not run_ids or not is_embedded_broker(settings.broker_url):
        return 0
    removed = 0
    for path in embedded_broker_folders(settings.broker_folder)["messages"].glob("*.msg"):
        try:
            named = run_ids_in_message(path.read_bytes())
        except (OSError, ValueError):
            # Taken by a consumer meanwhile, or still being written.
            continue
        if named and named <= run_ids:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def _maintenance_lock(engine: Engine, *, wait_seconds: float) -> Iterator[bool]:
    deadline = time.monotonic() + wait_seconds
    with engine.connect() as connection:
        held = try_lock_maintenance(connection=connection)
        while not held and time.monotonic() < deadline:
            time.sleep(0.5)
            held = try_lock_maintenance(connection=connection)
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(Exception):
                    unlock_maintenance(connection=connection)


def run_maintenance(
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    enqueue: RunEnqueuer | None = None,
    broker_lookup: BrokerLookup | None = None,
    now: Callable[[], datetime] = utc_now,
    wait_seconds: float = 0.0,
) -> MaintenanceReport:
    """One pass: reap stale runs, then send tasks for queued runs that have none, under the pass lock."""
    settings = settings or get_settings()
    if enqueue is None:
        from app.dispatch import enqueue_runs

        enqueue = enqueue_runs
    lookup = broker_lookup or (lambda: broker_run_ids(settings))
    own_engine = engine is None
    # A short-lived engine of its own: the worker's main process must not keep pooled connections
    # that its forked pool children would inherit.
    database = engine or make_engine(settings.database_url)
    try:
        with _maintenance_lock(database, wait_seconds=wait_seconds) as held:
            if not held:
                return MaintenanceReport(skipped=True)
            with session_scope(database) as session:
                stale = reap_stale_runs(session=session, now=now(), settings=settings)
            with session_scope(database) as session:
                sent = reconcile_queued_runs(
                    session=session, enqueue=enqueue, now=now(), settings=settings, broker_run_ids=lookup
                )
    finally:
        if own_engine:
            database.dispose()
    return MaintenanceReport(requeued_stale=stale.requeued, failed_stale=stale.failed, enqueued=sent)


class MaintenanceLoop:
    """A daemon thread in a worker's main process that runs a maintenance pass now and every ``interval`` seconds."""

    def __init__(self, *, interval: float, run_pass: Callable[[], MaintenanceReport] = run_maintenance) -> None:
        self._interval = interval
        self._run_pass = run_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def start(self) -> None:
        """Start passing in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass in progress, if any."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                report = self._run_pass()
            except Exception:
                # The database or broker may be briefly unreachable; the next pass tries again.
                logger.warning("maintenance pass failed", exc_info=True)
            else:
                changed = report.requeued_stale or report.failed_stale or report.enqueued
                logger.log(logging.INFO if changed else logging.DEBUG, "maintenance pass: %s", report.summary())
            self._stop.wait(self._interval)


_loop: MaintenanceLoop | None = None


@worker_ready.connect
def _start_maintenance(sender: Any = None, **_: Any) -> None:
    global _loop
    interval = get_settings().maintenance_interval_seconds
    if sender is None or interval <= 0:
        return
    _loop = MaintenanceLoop(interval=interval)
    _loop.start()


@worker_shutdown.connect
def _stop_maintenance(**_: Any) -> None:
    if _loop is not None:
        _loop.stop()


@worker_process_init.connect
def _forget_parent_state(**_: Any) -> None:
    # A forked pool child inherits the module state but not the thread.
    global _loop
    _loop = None
    # It may also inherit the main process's pooled database connections (the task's failure
    # handler runs there after a hard time limit): drop them without closing the parent's sockets.
    from app.db import get_engine

    get_engine().dispose(close=False)
