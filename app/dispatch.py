"""Which queue an experiment's runs go to, and sending them there (after the commit).

Imports Celery's app (no torch): the API process enqueues, the workers consume.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.models.types import utc_now
from app.workers.repository import workers_seen_since

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"


def is_gpu_worker(*, device: str, queues: list[str]) -> bool:
    """True for a worker that trains on CUDA and consumes the gpu queue."""
    return device.startswith("cuda") and GPU_QUEUE in queues


def choose_queue(*, session: Session, device: str) -> str:
    """'cuda' goes to gpu, 'cpu' to cpu, 'auto' to gpu while a GPU worker has a fresh heartbeat, else cpu."""
    if device == "cuda":
        return GPU_QUEUE
    if device == "cpu":
        return CPU_QUEUE
    if device != "auto":
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', got {device!r}")
    since = utc_now() - timedelta(seconds=get_settings().worker_fresh_seconds)
    alive = workers_seen_since(session=session, since=since)
    if any(is_gpu_worker(device=node.device, queues=list(node.queues or [])) for node in alive):
        return GPU_QUEUE
    return CPU_QUEUE


def enqueue_runs(*, run_ids: list[uuid.UUID], queue: str) -> None:
    """Send one training task per run to ``queue``; call only after the rows are committed."""
    # Imported here so that choosing a queue never needs a broker connection.
    from worker.celery_app import QUEUES, TRAIN_RUNS_TASK, celery_app

    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {', '.join(QUEUES)}, got {queue!r}")
    for run_id in run_ids:
        celery_app.send_task(TRAIN_RUNS_TASK, kwargs={"run_ids": [str(run_id)]}, queue=queue)


def max_attempts_per_run(settings: Settings) -> int:
    """How many times a worker may start a run in all, retries of POST .../retry included (the worker's rule)."""
    from worker.lifecycle import max_attempts

    return max_attempts(settings)
