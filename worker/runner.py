"""Drive runs through the engine: claim, train, write every epoch, honour cancel, record the end.

The database is the source of truth: a task carries run ids only and everything else is
read here. Each epoch is one transaction (metrics upsert, progress, heartbeat, experiment
status, cancel check) fenced by the attempt number of this worker's claim, so a worker
whose run was taken over can never overwrite the newer attempt's rows. The steps both runners share
(claim, heartbeat thread, database retry, the error ladder, the time-limit texts) live in
worker/lifecycle.py.

Importing this module does not import torch; the engine is imported when a run starts, in
the process that trains it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from app.config import Settings, get_settings
from app.db import get_engine, session_scope
from app.experiments.service import refresh_experiment_status
from app.logging_config import log_context
from app.metrics.write_repository import replace_robustness, upsert_epoch_metrics_of_runs
from app.models import RunStatus
from app.runs.state_repository import (
    ClaimedRun,
    StaleAttemptError,
    cancel_requested,
    finish_run,
    lock_experiment_of_run,
    record_epoch_progress_of_runs,
    record_run_start,
)
from app.spec_factors import run_spec
from worker.lifecycle import (
    PeriodicRunHeartbeat,
    RunOutcome,
    checkpoint_path,
    claim_or_end,
    configure_torch,
    drop_checkpoint_after,
    end_after_error,
    end_before_training,
    status_of_outcome,
    training_device,
    with_database_retry,
)

if TYPE_CHECKING:
    from worker.training.reports import ArmOutcome, EpochReport, RobustnessPoint, RunInfo

logger = logging.getLogger(__name__)

# runs.stacking_reason of a run trained through execute_run (the stacked runner gives its own reasons).
ONE_RUN_PATH = "trained through the one-run path (worker.runner.execute_run), which never stacks"


class RunHeartbeat(PeriodicRunHeartbeat):
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


def _finish(
    *,
    engine: Engine,
    claimed: ClaimedRun,
    status: RunStatus,
    epochs_completed: int | None = None,
    diverged_epoch: int | None = None,
    training_seconds: float | None = None,
    error: str | None = None,
    robustness: Sequence[RobustnessPoint] = (),
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
            # With the end, in its transaction: a crash before it leaves the run to resume and measure again.
            if robustness:
                replace_robustness(session=session, run_id=claimed.run_id, attempt=claimed.attempt, points=robustness)
            refresh_experiment_status(session=session, experiment_id=claimed.experiment_id)

    with_database_retry(write, what=f"run {claimed.run_id}: recording its end ({status.value})", seconds=retry_seconds)


class _EpochWriter:
    """The engine's callbacks for one claimed run: record placement, write each epoch, answer 'keep going?'."""

    def __init__(
        self,
        *,
        engine: Engine,
        claimed: ClaimedRun,
        heartbeat: RunHeartbeat,
        retry_seconds: float,
        stacking_reason: str | None,
    ) -> None:
        self._engine = engine
        self._claimed = claimed
        self._heartbeat = heartbeat
        self._retry_seconds = retry_seconds
        self._stacking_reason = stacking_reason

    def on_start(self, info: RunInfo) -> None:
        with_database_retry(
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
                time_gradients=info.time_gradients,
                stacking_reason=self._stacking_reason,
            )

    def on_epoch(self, report: EpochReport) -> bool | None:
        if self._heartbeat.stale:
            raise StaleAttemptError(f"run {self._claimed.run_id}: attempt {self._claimed.attempt} was taken over")
        return with_database_retry(
            lambda: self._write_epoch(report),
            what=f"run {self._claimed.run_id}: writing epoch {report.epoch}",
            seconds=self._retry_seconds,
        )

    def _write_epoch(self, report: EpochReport) -> bool | None:
        with session_scope(self._engine) as session:
            lock_experiment_of_run(session=session, run_id=self._claimed.run_id)
            run = (self._claimed.run_id, self._claimed.attempt)
            # The fence first, with the progress and heartbeat in one statement (as a stack's epoch writes it).
            if record_epoch_progress_of_runs(session=session, runs=[run], epochs_completed=report.epoch):
                raise StaleAttemptError(f"run {run[0]}: attempt {run[1]} was taken over")
            upsert_epoch_metrics_of_runs(session=session, writes=[(*run, report)])
            # The run is still running (its end, diverged included, is recorded by _finish): the experiment's
            # status stands.
            stop = cancel_requested(session=session, experiment_id=self._claimed.experiment_id)
        return False if stop else None


def _train(*, claimed: ClaimedRun, writer: _EpochWriter, settings: Settings, checkpoint: Path) -> ArmOutcome:
    from worker.training.trainer import train_arm

    configure_torch(settings)
    spec = run_spec(claimed.spec, claimed.cell_levels)
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
        claimed, ended = claim_or_end(
            engine=engine, run_id=run_id, worker_host=worker_host, task_id=task_id, settings=settings
        )
        if claimed is None:
            logger.info("run %s: not claimed (finished, or running elsewhere)", run_id)
            return RunOutcome(run_id, None)
        # Every line logged while the run trains carries its ids (JSON logs: fields; text: a suffix).
        with log_context(experiment_id=claimed.experiment_id):
            if ended:
                return end_before_training(claimed=claimed, settings=settings, log=logger)
            return execute_claimed(
                claimed=claimed, worker_host=worker_host, engine=engine, settings=settings, stacking_reason=ONE_RUN_PATH
            )


def execute_claimed(
    *, claimed: ClaimedRun, worker_host: str, engine: Engine, settings: Settings, stacking_reason: str
) -> RunOutcome:
    """Train a run this worker claimed (and ``claim_or_end`` did not end) to its end and record how it ended.

    Returns as ``execute_run`` does; the stacked runner trains a run that stacks with no other here, and says
    why in ``stacking_reason`` (runs.stacking_reason).
    """
    run_id = claimed.run_id
    retry_seconds = settings.database_retry_seconds
    checkpoint = checkpoint_path(run_id=run_id, settings=settings)
    logger.info("run %s: attempt %d started on %s", run_id, claimed.attempt, worker_host)
    heartbeat = RunHeartbeat(
        engine=engine, run_id=run_id, attempt=claimed.attempt, interval=settings.run_heartbeat_seconds
    )
    writer = _EpochWriter(
        engine=engine,
        claimed=claimed,
        heartbeat=heartbeat,
        retry_seconds=retry_seconds,
        stacking_reason=stacking_reason,
    )
    try:
        with heartbeat:
            outcome = _train(claimed=claimed, writer=writer, settings=settings, checkpoint=checkpoint)
        status = status_of_outcome(outcome.status)
        _finish(
            engine=engine,
            claimed=claimed,
            status=status,
            epochs_completed=outcome.epochs_completed,
            diverged_epoch=outcome.diverged_epoch,
            training_seconds=outcome.training_seconds,
            robustness=outcome.robustness,
            retry_seconds=retry_seconds,
        )
    except StaleAttemptError:
        # A newer attempt owns the run (and may resume from the checkpoint): leave everything to it.
        logger.warning("run %s: attempt %d was taken over by a newer attempt; stopping", run_id, claimed.attempt)
        return RunOutcome(run_id, None, claimed.attempt)
    except Exception as error:
        # The time limit and deterministic errors end the run; a shutdown or a transient error is raised.
        status, message = end_after_error(
            error, settings=settings, subject=f"run {run_id}: attempt {claimed.attempt}", log=logger
        )
        if not _finish_quietly(
            engine=engine, claimed=claimed, status=status, error=message, retry_seconds=retry_seconds
        ):
            return RunOutcome(run_id, None, claimed.attempt)
    drop_checkpoint_after(status, checkpoint)
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
