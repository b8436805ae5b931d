"""Drive runs through the engine: claim, train, write every epoch, honour cancel, record the end.

The database is the source of truth: a task carries run ids only and everything else is
read here. Each epoch is one transaction (metrics upsert, progress, heartbeat, experiment
status, cancel check) fenced by the attempt number of this worker's claim, so a worker
whose run was taken over can never overwrite the newer attempt's rows.

Importing this module does not import torch; the engine is imported when a run starts, in
the process that trains it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app.config import Settings, get_settings
from app.db import get_engine, session_scope
from app.logging_config import log_context
from app.metrics.write_repository import upsert_epoch_metrics
from app.models import RunStatus
from app.runs.state_repository import (
    ClaimedRun,
    StaleAttemptError,
    cancel_requested,
    claim_run,
    fence_run,
    finish_run,
    lock_experiment_of_run,
    record_epoch_progress,
    record_run_start,
)
from app.spec import load_stored_spec
from worker.db_retry import retry_transient

if TYPE_CHECKING:
    from worker.training.reports import ArmOutcome, EpochReport, RunInfo

logger = logging.getLogger(__name__)

# Longest error text stored on a run.
_ERROR_LIMIT = 4000


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


def checkpoint_path(*, run_id: uuid.UUID, settings: Settings) -> Path:
    """Where a run's resumable training state lives while it trains."""
    return Path(settings.checkpoint_dir).expanduser() / f"{run_id}.pt"


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


class PeriodicHeartbeat:
    """A background thread, running while the context is entered, that calls ``beat`` every ``interval`` seconds.

    ``beat`` refreshes heartbeats in sessions of its own, so a long epoch does not look abandoned; it
    returns False to end the thread.
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


class RunHeartbeat(PeriodicHeartbeat):
    """The heartbeat of one running run; when a newer attempt owns the run it sets ``stale`` and the next
    epoch boundary stops the run."""

    def __init__(self, *, engine: Engine, run_id: uuid.UUID, attempt: int, interval: float) -> None:
        super().__init__(engine=engine, interval=interval, name=f"run-heartbeat-{run_id}")
        self._run_id = run_id
        self._attempt = attempt
        self.stale = False

    def beat(self) -> bool:
        if self.fence(self._run_id, self._attempt):
            return True
        self.stale = True
        return False


def _refresh_experiment(session: Any, experiment_id: uuid.UUID) -> None:
    from app.experiments.service import refresh_experiment_status

    refresh_experiment_status(session=session, experiment_id=experiment_id)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 3] + "..."


def _claim(
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
        _refresh_experiment(session, claimed.experiment_id)
        return claimed, ended


def max_attempts(settings: Settings) -> int:
    """How many times a run may be started, whatever ended the earlier attempts."""
    return settings.task_max_retries + 1


def _finish(
    *,
    engine: Engine,
    claimed: ClaimedRun,
    status: RunStatus,
    epochs_completed: int | None = None,
    diverged_epoch: int | None = None,
    training_seconds: float | None = None,
    error: str | None = None,
    retry_seconds: float,
) -> None:
    def write() -> None:
        with session_scope(engine) as session:
            lock_experiment_of_run(session=session, run_id=claimed.run_id)
            finish_run(
                session=session,
                run_id=claimed.run_id,
                attempt=claimed.attempt,
                status=status,
                epochs_completed=epochs_completed,
                diverged_epoch=diverged_epoch,
                training_seconds=training_seconds,
                error=error,
            )
            _refresh_experiment(session, claimed.experiment_id)

    _with_database_retry(write, what=f"run {claimed.run_id}: recording its end ({status.value})", seconds=retry_seconds)


def _with_database_retry(operation: Any, *, what: str, seconds: float) -> Any:
    """Repeat a fenced, idempotent write through a database outage of up to ``seconds``."""
    return retry_transient(
        operation,
        what=what,
        patience_seconds=seconds,
        is_transient=lambda error: is_transient_error(error) and shutdown_behind(error) is None,
    )


class _EpochWriter:
    """The engine's callbacks for one claimed run: record placement, write each epoch, answer 'keep going?'."""

    def __init__(self, *, engine: Engine, claimed: ClaimedRun, heartbeat: RunHeartbeat, retry_seconds: float) -> None:
        self._engine = engine
        self._claimed = claimed
        self._heartbeat = heartbeat
        self._retry_seconds = retry_seconds

    def on_start(self, info: RunInfo) -> None:
        _with_database_retry(
            lambda: self._write_start(info),
            what=f"run {self._claimed.run_id}: recording its start",
            seconds=self._retry_seconds,
        )

    def _write_start(self, info: RunInfo) -> None:
        with session_scope(self._engine) as session:
            lock_experiment_of_run(session=session, run_id=self._claimed.run_id)
            record_run_start(
                session=session,
                run_id=self._claimed.run_id,
                attempt=self._claimed.attempt,
                device=info.device,
                init_scheme=info.init_scheme,
                parameter_count=info.parameter_count,
                activation_placement=info.activation_placement,
                training_path=info.training_path,
            )

    def on_epoch(self, report: EpochReport) -> bool | None:
        if self._heartbeat.stale:
            raise StaleAttemptError(f"run {self._claimed.run_id}: attempt {self._claimed.attempt} was taken over")
        return _with_database_retry(
            lambda: self._write_epoch(report),
            what=f"run {self._claimed.run_id}: writing epoch {report.epoch}",
            seconds=self._retry_seconds,
        )

    def _write_epoch(self, report: EpochReport) -> bool | None:
        with session_scope(self._engine) as session:
            lock_experiment_of_run(session=session, run_id=self._claimed.run_id)
            upsert_epoch_metrics(
                session=session, run_id=self._claimed.run_id, attempt=self._claimed.attempt, report=report
            )
            record_epoch_progress(
                session=session,
                run_id=self._claimed.run_id,
                attempt=self._claimed.attempt,
                epochs_completed=report.epoch,
            )
            _refresh_experiment(session, self._claimed.experiment_id)
            stop = cancel_requested(session=session, experiment_id=self._claimed.experiment_id)
        return False if stop else None


def _train(*, claimed: ClaimedRun, writer: _EpochWriter, settings: Settings, checkpoint: Path) -> ArmOutcome:
    from worker.training.trainer import train_arm

    configure_torch(settings)
    spec = load_stored_spec(claimed.spec)
    return train_arm(
        spec,
        activation_index=claimed.activation_index,
        seed=claimed.seed,
        device=training_device(spec_device=spec.device, queue=claimed.queue),
        on_start=writer.on_start,
        on_epoch=writer.on_epoch,
        checkpoint_path=checkpoint,
        checkpoint_interval=settings.checkpoint_interval_seconds,
    )


_OUTCOME_STATUS = {"succeeded": RunStatus.succeeded, "diverged": RunStatus.diverged, "cancelled": RunStatus.cancelled}


def execute_run(
    *,
    run_id: uuid.UUID,
    worker_host: str,
    task_id: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> RunOutcome:
    """Claim and train one run to its end; transient errors propagate (the task retries), others are recorded.

    Returns the status this delivery recorded, or None when the run was not ours (already
    finished, running elsewhere, or taken over by a newer attempt while we trained).
    """
    settings = settings or get_settings()
    engine = engine or get_engine()
    with log_context(run_id=run_id):
        claimed, ended = _claim(
            engine=engine, run_id=run_id, worker_host=worker_host, task_id=task_id, settings=settings
        )
        if claimed is None:
            logger.info("run %s: not claimed (finished, or running elsewhere)", run_id)
            return RunOutcome(run_id, None)
        # Every line logged while the run trains carries its ids (JSON logs: fields; text: a suffix).
        with log_context(experiment_id=claimed.experiment_id):
            return _execute_claimed(
                claimed=claimed, ended=ended, worker_host=worker_host, engine=engine, settings=settings
            )


def _execute_claimed(
    *, claimed: ClaimedRun, ended: bool, worker_host: str, engine: Engine, settings: Settings
) -> RunOutcome:
    """Train a claimed run to its end and record how it ended (see execute_run)."""
    run_id = claimed.run_id
    retry_seconds = settings.database_retry_seconds
    checkpoint = checkpoint_path(run_id=run_id, settings=settings)
    if ended:
        checkpoint.unlink(missing_ok=True)
        status = RunStatus.failed if claimed.attempt > max_attempts(settings) else RunStatus.cancelled
        logger.info("run %s: attempt %d ended %s before training", run_id, claimed.attempt, status.value)
        return RunOutcome(run_id, status, claimed.attempt)
    logger.info("run %s: attempt %d started on %s", run_id, claimed.attempt, worker_host)
    heartbeat = RunHeartbeat(
        engine=engine, run_id=run_id, attempt=claimed.attempt, interval=settings.run_heartbeat_seconds
    )
    writer = _EpochWriter(engine=engine, claimed=claimed, heartbeat=heartbeat, retry_seconds=retry_seconds)
    try:
        with heartbeat:
            outcome = _train(claimed=claimed, writer=writer, settings=settings, checkpoint=checkpoint)
        status = _OUTCOME_STATUS[outcome.status]
        _finish(
            engine=engine,
            claimed=claimed,
            status=status,
            epochs_completed=outcome.epochs_completed,
            diverged_epoch=outcome.diverged_epoch,
            training_seconds=outcome.training_seconds,
            retry_seconds=retry_seconds,
        )
    except StaleAttemptError:
        # A newer attempt owns the run (and may resume from the checkpoint): leave everything to it.
        logger.warning("run %s: attempt %d was taken over by a newer attempt; stopping", run_id, claimed.attempt)
        return RunOutcome(run_id, None, claimed.attempt)
    except SoftTimeLimitExceeded:
        status = RunStatus.timed_out
        message = (
            f"stopped by the time limit of {settings.task_soft_time_limit} s (setting ACTLAB_TASK_SOFT_TIME_LIMIT); "
            "the finished epochs are kept"
        )
        if not _finish_quietly(
            engine=engine, claimed=claimed, status=status, error=message, retry_seconds=retry_seconds
        ):
            return RunOutcome(run_id, None, claimed.attempt)
    except Exception as error:
        shutdown = shutdown_behind(error)
        if shutdown is not None:
            # The process is being stopped: let it stop; the broker redelivers the run, which resumes.
            logger.warning("run %s: attempt %d interrupted by the worker's shutdown", run_id, claimed.attempt)
            raise shutdown from error
        if is_transient_error(error):
            # Keep the checkpoint: the retry resumes from it.
            raise
        logger.exception("run %s: attempt %d failed", run_id, claimed.attempt)
        status = RunStatus.failed
        if not _finish_quietly(
            engine=engine, claimed=claimed, status=status, error=_error_text(error), retry_seconds=retry_seconds
        ):
            return RunOutcome(run_id, None, claimed.attempt)
    checkpoint.unlink(missing_ok=True)
    logger.info("run %s: attempt %d ended %s", run_id, claimed.attempt, status.value)
    return RunOutcome(run_id, status, claimed.attempt)


def _finish_quietly(
    *, engine: Engine, claimed: ClaimedRun, status: RunStatus, error: str, retry_seconds: float
) -> bool:
    """Record a failure-like end; False when a newer attempt owns the run. Transient errors propagate."""
    try:
        _finish(engine=engine, claimed=claimed, status=status, error=error, retry_seconds=retry_seconds)
    except StaleAttemptError:
        return False
    return True


def execute_runs(
    *,
    run_ids: list[uuid.UUID],
    worker_host: str,
    task_id: str | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> BatchOutcome:
    """Execute a task's runs in order; after a time-out the rest are returned unstarted, for a new task."""
    batch = BatchOutcome()
    for index, run_id in enumerate(run_ids):
        outcome = execute_run(run_id=run_id, worker_host=worker_host, task_id=task_id, engine=engine, settings=settings)
        batch.outcomes.append(outcome)
        if outcome.status == RunStatus.timed_out:
            batch.not_started = list(run_ids[index + 1 :])
            break
    return batch
