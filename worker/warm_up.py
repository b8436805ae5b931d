"""Warm pool processes: each one, once forked, does in the background what the first run would do first.

The first experiment after ``actlab serve`` used to take several times as long as the next (9.2 s against
about 2 s, issue 16): each pool process built its first model and optimiser (torch's lazy initialisation
of autograd, the optimiser's kernels) and loaded its dataset on the first run. Now every pool process,
right after the fork (``worker_process_init``), starts a daemon thread that loads the
dataset named by ACTLAB_WORKER_WARM_UP_DATASET (into this process's dataset cache and the shared one on
disk) and trains a tiny model of it for one optimiser step. Nothing waits for it: the process takes tasks
at once, a run that needs the same dataset meanwhile waits for the generation in progress (a file lock) instead
of repeating it, and one that needs another dataset does not wait at all. It runs at the runs' own
priority: a run waiting for the dataset it generates must not wait behind a lower priority
(bench/cold_start.py measured that on a loaded machine). An empty setting (the default: on the 2-core
development machine the warm-up made the first experiment slower, bench/RESULTS.md) turns it off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_process_init

from app.config import Settings, get_settings

logger = logging.getLogger(__name__)

_WARM_UP_SPEC: dict[str, Any] = {
    "name": "warm-up",
    "model": {"kind": "mlp", "hidden": [8]},
    "activations": ["relu"],
    "seeds": [0],
    "training": {"epochs": 1, "batch_size": 32, "optimizer": "adam"},
    "device": "cpu",
}


def warm_up(settings: Settings) -> None:
    """Load the warm-up dataset and take one optimiser step of a tiny model on it (what a first run pays)."""
    from worker.lifecycle import configure_torch

    configure_torch(settings)
    import torch

    from app.spec import ExperimentSpec
    from worker.training.datasets import load_dataset, prepare_dataset
    from worker.training.models import build_model
    from worker.training.trainer import build_optimizer

    spec = ExperimentSpec.model_validate({**_WARM_UP_SPEC, "dataset": {"name": settings.worker_warm_up_dataset}})
    # Generated outside the process's dataset lock (a run's load of another dataset must not wait for it); the
    # load then reads the file, holding the lock only for that.
    prepare_dataset(spec.dataset, settings=settings)
    data = load_dataset(spec.dataset, settings=settings)
    model = build_model(spec, spec.activations[0], input_shape=data.input_shape, classes=data.classes)
    optimizer = build_optimizer(model.parameters(), spec.training)
    loss = torch.nn.functional.cross_entropy(model(data.train_x[:32]), data.train_y[:32])
    loss.backward()
    optimizer.step()


def _warm_up_in_background(settings: Settings) -> None:
    try:
        warm_up(settings)
    except Exception as error:  # a warm-up that fails costs the first run its time, nothing else
        logger.warning("pool process warm-up failed: %s", error)


@worker_process_init.connect
def _start_warm_up(**_: Any) -> None:
    settings = get_settings()
    if settings.worker_warm_up_dataset:
        threading.Thread(target=_warm_up_in_background, args=(settings,), name="actlab-warm-up", daemon=True).start()
