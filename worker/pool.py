"""Facts about the worker's pool of processes that size the work of each one: processes, torch threads, memory.

A worker runs ``concurrency`` pool processes. On CPUs the measured best (bench/RESULTS.md) is as
many processes as cores with one torch thread each, every process training its share of an
experiment stacked; the settings default to that, and these helpers turn them into numbers.

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_init

from app.config import Settings, available_cores

# Share of a GPU's free memory one stack may fill by default; the rest covers the allocator's slack.
_GPU_MEMORY_SHARE = 0.8

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


def stack_memory_budget_bytes(*, settings: Settings, device: Any) -> int:
    """Memory one stack on ``device`` (a torch device) may use: the setting, else a share of the GPU's free memory
    or of the machine's memory (half of it, divided among the worker's processes)."""
    if settings.stack_memory_budget_mb > 0:
        return settings.stack_memory_budget_mb * 2**20
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free * _GPU_MEMORY_SHARE)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(physical // (2 * max(worker_processes(settings), 1)))
