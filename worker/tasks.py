"""Thin Celery tasks: take run ids, call the runner; the retry and acknowledgement policy lives here.

Acknowledgement is late (worker/celery_app.py): a task whose worker dies is redelivered and
its runs are claimed again by the same task id, resuming from their checkpoints.
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

from celery import Task
from celery.exceptions import TimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

import worker.heartbeat  # noqa: F401  (connects the worker-liveness signal handlers)
from app.config import get_settings
from worker.celery_app import TRAIN_RUNS_TASK, celery_app
from worker.lifecycle import (
    ERROR_TEXT_LIMIT,
    end_runs_of_killed_task,
    end_runs_of_task,
    hard_time_limit_message,
    is_transient_error,
)

# One run per task, trained with the queued runs of its experiment it stacks with (worker/stacked_runner.py).
from worker.stacked_runner import execute_runs

logger = logging.getLogger(__name__)


def retry_countdown(*, retries: int, base: int, maximum: int) -> int:
    """Seconds before retry number ``retries + 1``: exponential in ``base`` with full jitter, at most ``maximum``."""
    return int(get_exponential_backoff_interval(factor=base, retries=retries, maximum=maximum, full_jitter=True))


class TrainRunsTask(Task):  # type: ignore[misc]
    """Records a task that gave up on its runs, so they never stay 'running' with nobody training them."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """Mark the task's unfinished runs failed (timed_out after the hard time limit) with the reason, best effort."""
        from app.models import RunStatus

        run_ids = [uuid.UUID(str(run_id)) for run_id in kwargs.get("run_ids", [])]
        settings = get_settings()
        if isinstance(exc, TimeLimitExceeded):
            # Called in the worker's main process before it kills the pool process, which may hold the locks the
            # end needs: written by a thread that waits for them, so the kill (and the locks' release) comes first.
            end_runs_of_killed_task(
                task_id=task_id,
                run_ids=run_ids,
                status=RunStatus.timed_out,
                error=hard_time_limit_message(settings),
                settings=settings,
            )
            return
        reason = f"gave up after {self.request.retries} retries: {type(exc).__name__}: {exc}"[:ERROR_TEXT_LIMIT]
        try:
            end_runs_of_task(task_id=task_id, run_ids=run_ids, status=RunStatus.failed, error=reason, settings=settings)
        except Exception:
            logger.exception("could not record the failure of runs %s", run_ids)


@celery_app.task(name=TRAIN_RUNS_TASK, bind=True, base=TrainRunsTask, max_retries=None)
def train_runs(self: TrainRunsTask, run_ids: list[str]) -> dict[str, Any]:
    """Train the runs with these ids; retry with backoff on transient errors only."""
    settings = get_settings()
    identifiers = [uuid.UUID(str(run_id)) for run_id in run_ids]
    worker_host = self.request.hostname or socket.gethostname()
    try:
        batch = execute_runs(run_ids=identifiers, worker_host=worker_host, task_id=self.request.id)
    except Exception as error:
        if not is_transient_error(error) or self.request.retries >= settings.task_max_retries:
            raise
        countdown = retry_countdown(
            retries=self.request.retries, base=settings.task_retry_backoff, maximum=settings.task_retry_backoff_max
        )
        logger.warning("transient error on runs %s, retry in %d s: %s", run_ids, countdown, error)
        # The retry keeps this task id, which lets it take over the runs this attempt left running.
        raise self.retry(exc=error, countdown=countdown) from error
    if batch.not_started:
        from app.dispatch import enqueue_runs

        queue = (self.request.delivery_info or {}).get("routing_key") or "cpu"
        enqueue_runs(run_ids=batch.not_started, queue=queue)
    return {
        "runs": {str(outcome.run_id): outcome.status.value if outcome.status else None for outcome in batch.outcomes},
        "requeued": [str(run_id) for run_id in batch.not_started],
    }
