"""Warm the worker once, in its main process before the pool forks, so that every pool process inherits it.

What the first run of a fresh pool process used to pay besides its training (per-phase timestamps of the
first experiment after ``actlab serve``, 2 pool processes, load 8 on 2 cores; bench/RESULTS.md "Cold
workers", 2026-12-04): 14.6 s importing ``torch._dynamo``, which ``torch.optim`` imports lazily when the
first optimiser is built, in both processes at once; 12.6 s generating MNIST-1D (the other process waiting
on the dataset cache's lock); 1 s importing the engine's modules. A warm-up thread in each pool process
(the previous design) only moved that work next to the first runs, which then competed with it.

Now the worker's main process, once its logging is set up and before its pool forks (``celeryd_after_setup``;
the consumer starts after the pool), imports the engine, builds one
optimiser of each kind (so whatever ``torch.optim`` imports lazily is imported) and loads the dataset named
by ACTLAB_WORKER_WARM_UP_DATASET: into the shared on-disk cache (one generator across processes: the cache's
file lock makes any other worker or ``actlab train`` wait for it and read the file) and into this process's
dataset cache, which the pool processes inherit by fork. Nothing of it is repeated per pool process.

- The API is another process (``actlab serve`` starts the worker as a child): ``/healthz`` answers while
  the worker warms up; ``/readyz`` says 503 until the worker consumes (its liveness row is written when it
  is ready). A run submitted meanwhile waits in the queue, not beside a second generation of its dataset.
- Nothing is computed here beyond one scalar parameter on the CPU: a torch thread pool or a CUDA context
  created before the fork would be shared badly by the pool processes (a GPU worker's pool processes
  initialise CUDA themselves).
- A warm-up that fails (a dataset that cannot be loaded here) is logged and costs the first run its time,
  nothing else. An empty setting turns the warm-up off.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import celeryd_after_setup

from app.config import Settings, get_settings

logger = logging.getLogger(__name__)

# The optimisers a spec may name (app.spec.TrainingSpec): each may import its own parts of torch lazily.
_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def warm_up(settings: Settings) -> None:
    """Import the engine, build one optimiser of each kind on a scalar parameter and load the warm-up dataset."""
    import torch

    # The engine as a run imports it at its start: the stacked trainer, and the trainer of a run alone.
    import worker.training.stacked  # noqa: F401
    from app.spec import DatasetSpec, TrainingSpec
    from worker.training.datasets import load_dataset
    from worker.training.trainer import build_optimizer

    parameter = torch.nn.Parameter(torch.zeros(1))
    for optimizer in _OPTIMIZERS:
        build_optimizer([parameter], TrainingSpec(optimizer=optimizer))
    load_dataset(DatasetSpec(name=settings.worker_warm_up_dataset), settings=settings)


@celeryd_after_setup.connect
def _warm_up_before_the_pool_forks(**_: Any) -> None:
    settings = get_settings()
    if not settings.worker_warm_up_dataset:
        return
    started = time.perf_counter()
    logger.info("warming up the worker (engine, dataset %s)", settings.worker_warm_up_dataset)
    try:
        warm_up(settings)
    except Exception as error:  # a warm-up that fails costs the first run its time, nothing else
        logger.warning("worker warm-up failed: %s", error)
        return
    logger.info("worker warmed up in %.1f s", time.perf_counter() - started)
