"""The life of a run on a worker, one public home for the rules both runners follow.

worker/runner.py trains one claimed run at a time, worker/stacked_runner.py trains claimed runs of
one experiment as one stacked model; every step they share is written here once:

- claim: the fenced claim of a delivery (one attempt more), ended at once when the experiment was
  cancelled or the run used every attempt (``claim_or_end``, ``max_attempts``, ``end_before_training``);
- run heartbeats: a thread that refreshes ``runs.heartbeat_at`` of the runs being trained, fenced by
  their attempts (``PeriodicRunHeartbeat``); a worker's own liveness record is another thing
  (worker/heartbeat.py);
- writes: idempotent, fenced transactions repeated through a short database outage
  (``with_database_retry``); a write that ends a run refreshes its experiment's status;
- the end: the status an engine outcome records (``status_of_outcome``) and the one ladder for an
  error that stops training (``end_after_error``: the time limit, the worker's shutdown, a transient
  error, anything else), with the texts the time limits leave on a run;
- a task given up: the end of its unfinished runs (``end_runs_of_task``), written after the hard time limit
  by a thread of the worker's main process once the pool process is killed (``end_runs_of_killed_task``);
- where a run trains: its checkpoint file (kept after a failed or timed-out end, for POST
  /v1/experiments/{id}/retry to resume from: ``drop_checkpoint_after``), its device, the process's torch threads.

Importing this module does not import torch; the worker's main process imports it once, before its pool
forks (``worker_init``), so no run pays the import.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_shutdown
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.config import Settings, get_settings
from app.db import session_scope
from app.experiments.service import refresh_experiment_status
from app.models import RunStatus
from app.models.status import RETRYABLE_RUN_STATUSES
from app.runs.stack_repository import unfinished_runs_of_task
from app.runs.state_repository import (
    ClaimedRun,
    StaleAttemptError,
    cancel_requested,
    claim_run,
    fail_unfinished_runs,
    fence_run,
    finish_run,
    lock_experiment_of_run,
)
from worker.db_retry import retry_transient

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longest error text stored on a run.
ERROR_TEXT_LIMIT = 4000

# The run status each end of the engine's training records.
_OUTCOME_STATUS = {"succeeded": RunStatus.succeeded, "diverged": RunStatus.diverged, "cancelled": RunStatus.cancelled}


@dataclass(frozen=True)
class RunOutcome:
    """How one delivery of a run ended: the status it recorded, or None when it did not own the run."""

    run_id: uuid.UUID
    status: RunStatus | None
    attempt: int | None = None


@dataclass
class BatchOutcome:
    """The outcomes of a task's runs, and the runs it had no time left to start."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    not_started: list[uuid.UUID] = field(default_factory=list)


def is_transient_error(error: BaseException) -> bool:
    """True for failures that may pass if tried again later: the database or broker unreachable or busy.

    Everything else (bad data, a missing dataset, divergence, a bug) is deterministic: it is
    recorded on the run and never retried.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, OperationalError):
        # SQLite reports schema and file errors as OperationalError too; only lock contention passes by itself.
        original = str(error.orig).lower()
        if type(error.orig).__module__.startswith("sqlite3"):
            return "locked" in original or "busy" in original
        return True
    transient = (
        InterfaceError,
        DisconnectionError,
        PoolTimeoutError,
        RedisConnectionError,
        RedisTimeoutError,
        BrokerOperationalError,
        ConnectionError,
        TimeoutError,
    )
    return isinstance(error, transient)


def shutdown_behind(error: BaseException) -> BaseException | None:
    """The SystemExit or KeyboardInterrupt that ``error`` masks, if any.

    A worker's pool process stops by raising SystemExit wherever it happens to be (billiard's
    signal handler); inside torch or a ``with`` block whose exit fails, that exit comes back
    as another error with the SystemExit as its context. Such an error says nothing about the
    run: the process is stopping, and the run must go back to the queue, not fail.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, SystemExit | KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def error_text(error: BaseException) -> str:
    """The text a failed run records: the error's type and message, cut to ERROR_TEXT_LIMIT characters."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."


def time_limit_message(settings: Settings) -> str:
    """The error of a run stopped by the task's soft time limit."""
    return (
        f"stopped by the time limit of {settings.task_soft_time_limit} s (setting ACTLAB_TASK_SOFT_TIME_LIMIT); "
        "the finished epochs are kept"
    )


def not_started_message(settings: Settings) -> str:
    """The error of a claimed run its task had no time left to start (an earlier run of the task timed out)."""
    return f"not started: the task ran out of time (setting ACTLAB_TASK_SOFT_TIME_LIMIT, {settings.task_soft_time_limit} s)"


def hard_time_limit_message(settings: Settings) -> str:
    """The error of a run whose pool process was killed by the task's hard time limit."""
    return (
        f"killed by the hard time limit of {settings.task_time_limit} s: it did not stop at the soft limit "
        f"of {settings.task_soft_time_limit} s (settings ACTLAB_TASK_SOFT_TIME_LIMIT, "
        "ACTLAB_TASK_TIME_LIMIT_GRACE); the finished epochs are kept"
    )


def end_runs_of_task(
    *, task_id: str, run_ids: list[uuid.UUID], status: RunStatus, error: str, settings: Settings
) -> list[uuid.UUID]:
    """End a task's unfinished runs (and those it claimed beside them) with ``status`` and ``error``; their experiments.

    One transaction, repeated through a database outage; the experiments are locked first, as every writer of runs
    does (PostgreSQL: one lock order; SQLite: the write lock taken by the first statement).
    """

    def write() -> list[uuid.UUID]:
        with session_scope() as session:
            for run_id in run_ids:
                lock_experiment_of_run(session=session, run_id=run_id)
            # A stacked task also holds the runs it claimed beside its own (same task id).
            ended = run_ids + unfinished_runs_of_task(session=session, task_id=task_id, run_ids=run_ids)
            experiment_ids = fail_unfinished_runs(session=session, run_ids=ended, error=error, status=status)
            for experiment_id in experiment_ids:
                refresh_experiment_status(session=session, experiment_id=experiment_id)
            return experiment_ids

    return with_database_retry(
        write,
        what=f"task {task_id}: recording the end of runs ({status.value})",
        seconds=settings.database_retry_seconds,
    )


# The threads writing the ends of tasks the hard time limit killed, until they are done.
_ends_in_progress: set[threading.Thread] = set()
_ends_lock = threading.Lock()


def end_runs_of_killed_task(
    *, task_id: str, run_ids: list[uuid.UUID], status: RunStatus, error: str, settings: Settings
) -> threading.Thread:
    """``end_runs_of_task`` in a thread of its own, for a task whose pool process is being killed; returns the thread.

    Celery reports the hard time limit (``Task.on_failure``) in the worker's main process before it kills the pool
    process (billiard: ``handle_timeout``, then ``_trywaitkill``). That process may be stuck, or stopped, inside a
    transaction, holding the row locks of its run and experiment (PostgreSQL) or the write lock (SQLite): written
    there, the end would wait for those locks, and so for a kill that comes only after it, forever (PostgreSQL;
    SQLite gave up after its busy timeout and left the run running). The locks go with the killed process.
    """

    def end() -> None:
        try:
            end_runs_of_task(task_id=task_id, run_ids=run_ids, status=status, error=error, settings=settings)
        except Exception:
            logger.exception("could not record the end (%s) of runs %s", status.value, run_ids)
        finally:
            with _ends_lock:
                _ends_in_progress.discard(threading.current_thread())

    thread = threading.Thread(target=end, name=f"end-of-task-{task_id}", daemon=True)
    with _ends_lock:
        _ends_in_progress.add(thread)
    thread.start()
    return thread


def wait_for_ends_of_killed_tasks(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the ends ``end_runs_of_killed_task`` is writing; True when none is left."""
    deadline = time.monotonic() + timeout
    with _ends_lock:
        threads = list(_ends_in_progress)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with _ends_lock:
        return not _ends_in_progress


@worker_shutdown.connect
def _finish_writing_ends(**_: Any) -> None:
    # A worker stopped right after a hard time limit still records the end it is writing (a run left running would
    # be requeued by the reaper and trained again).
    wait_for_ends_of_killed_tasks(get_settings().database_retry_seconds)


def end_after_error(
    error: Exception, *, settings: Settings, subject: str, log: logging.Logger
) -> tuple[RunStatus, str]:
    """The end that an error which stopped training records: (status, error text); raises when none must be.

    The time limit ends the run timed_out with its finished epochs. The worker's shutdown behind
    the error is raised: the process stops and the broker redelivers the task, which resumes from
    the checkpoint. A transient error is raised: the task retries, keeping the checkpoint. Anything
    else fails the run with the error's text. ``subject`` ("run ...: attempt ...") starts the log
    lines, written to the runner's ``log``.
    """
    if isinstance(error, SoftTimeLimitExceeded):
        return RunStatus.timed_out, time_limit_message(settings)
    shutdown = shutdown_behind(error)
    if shutdown is not None:
        log.warning("%s interrupted by the worker's shutdown", subject)
        raise shutdown from error
    if is_transient_error(error):
        raise error
    log.error("%s failed", subject, exc_info=error)
    return RunStatus.failed, error_text(error)


def status_of_outcome(outcome_status: str) -> RunStatus:
    """The run status an end of the engine's training (an ``ArmOutcome.status``) records."""
    return _OUTCOME_STATUS[outcome_status]


def max_attempts(settings: Settings) -> int:
    """How many times a run may be started, whatever ended the earlier attempts."""
    return settings.task_max_retries + 1


def checkpoint_path(*, run_id: uuid.UUID, settings: Settings) -> Path:
    """Where a run's resumable training state lives while it trains."""
    return Path(settings.checkpoint_dir).expanduser() / f"{run_id}.pt"


def drop_checkpoint_after(status: RunStatus, path: Path) -> None:
    """Delete a run's checkpoint once it ended, unless it ended failed or timed out (a retry resumes from it)."""
    if status not in RETRYABLE_RUN_STATUSES:
        path.unlink(missing_ok=True)


def training_device(*, spec_device: str, queue: str | None) -> str:
    """The device a run asks the engine for: the spec's, except 'auto' on the cpu queue trains on the CPU."""
    if spec_device == "auto" and queue == "cpu":
        return "cpu"
    return spec_device


_torch_configured = False


def configure_torch(settings: Settings) -> None:
    """Apply the worker's torch settings once per process (threads: equal on every worker for equal timings)."""
    global _torch_configured
    if _torch_configured:
        return
    import torch

    from worker.pool import torch_threads_in_force

    threads = torch_threads_in_force(settings)
    if threads > 0:
        torch.set_num_threads(threads)
    _torch_configured = True


@worker_init.connect
def _import_torch_before_the_pool_forks(**_: Any) -> None:
    # Pool processes fork from the worker's main process: importing torch there once (seconds idle,
    # tens of seconds on a loaded machine) keeps the import out of every run, where it would run
    # before the run's heartbeat starts (the reaper would take the run back) and under its soft
    # time limit (a limit firing mid-import leaves the pool process's torch half-initialised).
    import torch  # noqa: F401


def with_database_retry(operation: Callable[[], T], *, what: str, seconds: float) -> T:
    """Repeat a fenced, idempotent write through a database outage of up to ``seconds``."""
    return retry_transient(
        operation,
        what=what,
        patience_seconds=seconds,
        is_transient=lambda error: is_transient_error(error) and shutdown_behind(error) is None,
    )


def claim_or_end(
    *, engine: Engine, run_id: uuid.UUID, worker_host: str, task_id: str | None, settings: Settings
) -> tuple[ClaimedRun | None, bool]:
    """Claim the run; end it at once when its experiment was cancelled or it ran out of attempts.

    Returns the claim (None when the run is not ours) and whether the run already ended.
    """
    with session_scope(engine) as session:
        claimed = claim_run(
            session=session,
            run_id=run_id,
            worker_host=worker_host,
            task_id=task_id,
            stale_after=timedelta(seconds=settings.run_stale_seconds),
        )
        if claimed is None:
            return None, False
        ended = cancel_requested(session=session, experiment_id=claimed.experiment_id)
        if ended:
            finish_run(
                session=session,
                run_id=run_id,
                attempt=claimed.attempt,
                status=RunStatus.cancelled,
                epochs_completed=claimed.epochs_completed,
            )
        elif claimed.attempt > max_attempts(settings):
            # Each earlier attempt ended without recording an outcome (its worker or process was lost):
            # a run that kills its worker every time must not be redelivered forever.
            ended = True
            finish_run(
                session=session,
                run_id=run_id,
                attempt=claimed.attempt,
                status=RunStatus.failed,
                epochs_completed=claimed.epochs_completed,
                error=f"gave up: started {claimed.attempt - 1} times without finishing (the worker or its process "
                f"was lost each time; limit {max_attempts(settings)} attempts, setting ACTLAB_TASK_MAX_RETRIES)",
            )
        refresh_experiment_status(session=session, experiment_id=claimed.experiment_id)
        return claimed, ended


def end_before_training(*, claimed: ClaimedRun, settings: Settings, log: logging.Logger) -> RunOutcome:
    """The outcome of a claim that ``claim_or_end`` ended at once; drops the run's checkpoint."""
    checkpoint_path(run_id=claimed.run_id, settings=settings).unlink(missing_ok=True)
    status = RunStatus.failed if claimed.attempt > max_attempts(settings) else RunStatus.cancelled
    log.info("run %s: attempt %d ended %s before training", claimed.run_id, claimed.attempt, status.value)
    return RunOutcome(claimed.run_id, status, claimed.attempt)


class PeriodicRunHeartbeat:
    """A background thread, running while the context is entered, that calls ``beat`` every ``interval`` seconds.

    ``beat`` refreshes the heartbeats of the runs being trained (``runs.heartbeat_at``) in sessions of
    its own, so a long epoch does not look abandoned to the reaper; it returns False to end the thread.
    """

    def __init__(self, *, engine: Engine, interval: float, name: str) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        """Whether the context has been left (a beat in progress may end early)."""
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if not self.beat():
                return

    def fence(self, run_id: uuid.UUID, attempt: int) -> bool:
        """Refresh one run's heartbeat; False when a newer attempt owns it. A failed write only logs a warning."""
        try:
            with session_scope(self._engine) as session:
                fence_run(session=session, run_id=run_id, attempt=attempt)
        except StaleAttemptError:
            return False
        except Exception:
            # The epoch writes will meet the same problem and decide; a missed heartbeat is harmless.
            logger.warning("run %s: heartbeat failed", run_id, exc_info=True)
        return True

    def beat(self) -> bool:
        """One round of heartbeats; False ends the thread."""
        raise NotImplementedError
