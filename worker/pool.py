"""Facts about the worker's pool of processes that size the work of each one: processes, torch threads.

A worker runs ``concurrency`` pool processes. On CPUs the measured best (bench/RESULTS.md) is as
many processes as cores with one torch thread each, every process training its share of an
experiment stacked; the settings default to that, and these helpers turn them into numbers.

Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init

from app.config import Settings, available_cores

# The concurrency of the Celery worker this process belongs to; set in the worker's main process
# before its pool processes are forked, so they inherit it. None outside a worker.
_worker_concurrency: int | None = None


@worker_init.connect
def _remember_concurrency(sender: Any = None, **_: Any) -> None:
    """Keep the worker's concurrency, which ``actlab worker --concurrency`` may set apart from the settings."""
    global _worker_concurrency
    concurrency = getattr(sender, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        _worker_concurrency = concurrency


def worker_processes(settings: Settings) -> int:
    """The pool processes of this worker: the running worker's concurrency, else the setting."""
    return _worker_concurrency or settings.worker_concurrency


def torch_threads_in_force(settings: Settings) -> int:
    """torch threads for one worker process: the setting, else the cores shared out among the processes (0: torch's)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    processes = worker_processes(settings)
    if processes <= 1:
        return 0
    # Two threads per process on a shared machine were 1.2x to 14x slower than one (bench/RESULTS.md):
    # each small kernel waits for every thread, so the cores are divided, never oversubscribed.
    return max(1, available_cores() // processes)
