"""A run's training stream as optimiser steps: the batches of a data epoch and which steps each evaluation trains.

A run walks the concatenation of its data epochs' batches: data epoch d (1-based) is the training split
shuffled by ``worker.training.trainer.batch_indices(epoch=d)`` and cut by ``batch_sizes``, so the global steps
``(d - 1) x n .. d x n - 1`` are data epoch d's batches (n: ``len(batch_sizes(...))``). Each metrics row (its
``epoch`` k = 1, 2, ...) is one evaluation after the steps ``evaluation_steps`` gives: the k-th data epoch with
``training.epochs``, the k-th ``eval_every`` steps (the last one cut at ``training.steps``) with a step budget.
Both trainers read it here, so steps = K x n with eval_every = n trains exactly what epochs = K trains. No torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.spec import ExperimentSpec, TrainingSpec


def batch_sizes(size: int, batch_size: int) -> list[int]:
    """The sizes of one data epoch's batches of ``size`` examples: full batches, then the rest; a last batch of one
    example joins the one before (batch norm cannot train on a single example). ``trainer.batch_indices`` splits
    the shuffled order by them, and their count is the optimiser steps of a data epoch."""
    sizes = [batch_size] * (size // batch_size)
    if size % batch_size:
        sizes.append(size % batch_size)
    if len(sizes) > 1 and sizes[-1] == 1:
        # As ``sizes[-2] += sizes.pop()`` always did with three or more batches (it stores after the pop, so the
        # second-to-last full batch takes the example: 241 by 80 is 80, 81, 80; the batch order of existing runs
        # depends on it); with two batches that line raised IndexError, and the one full batch takes it.
        single = sizes.pop()
        sizes[-2 if len(sizes) > 1 else -1] += single
    return sizes


def training_examples(spec: ExperimentSpec) -> int:
    """The examples a run trains on: the training split less the validation examples, cut by any subset transform
    (as ``worker.training.datasets`` builds the split)."""
    train = spec.dataset.train_size
    fraction = spec.training.validation_fraction
    available = train - (max(1, math.floor(fraction * train + 0.5)) if fraction > 0 else 0)
    for transform in spec.dataset.transforms or []:
        if transform.kind == "subset" and transform.size is not None:
            available = min(available, transform.size)
    return max(available, 1)


def evaluation_steps(training: TrainingSpec, evaluation: int, *, size: int) -> range:
    """The global optimiser steps (0-based) evaluation ``evaluation`` trains, for ``size`` training examples;
    evaluation 0 (the network at initialisation) trains none. The row's ``step`` is the range's stop."""
    if evaluation <= 0:
        return range(0)
    if training.steps is None:
        per_epoch = len(batch_sizes(size, training.batch_size))
        return range((evaluation - 1) * per_epoch, evaluation * per_epoch)
    interval = training.evaluation_interval
    return range(min((evaluation - 1) * interval, training.steps), min(evaluation * interval, training.steps))


def data_epochs(steps: range, *, size: int, batch_size: int) -> list[tuple[int, slice]]:
    """Which data epochs (1-based) the global ``steps`` draw on, with the slice of each one's batches they take."""
    if not steps:
        return []
    per_epoch = len(batch_sizes(size, batch_size))
    first, last = steps.start // per_epoch + 1, (steps.stop - 1) // per_epoch + 1
    taken = []
    for epoch in range(first, last + 1):
        offset = (epoch - 1) * per_epoch
        taken.append((epoch, slice(max(steps.start - offset, 0), min(steps.stop - offset, per_epoch))))
    return taken


def examples_trained(steps: range, *, size: int, batch_size: int) -> int:
    """The training examples the global ``steps`` take (one data epoch's steps take ``size``)."""
    sizes = batch_sizes(size, batch_size)
    return sum(sizes[step % len(sizes)] for step in steps)
