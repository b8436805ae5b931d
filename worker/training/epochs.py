"""One epoch of training: the same body for one arm and for a stack of members.

Both trainers hand ``run_epoch`` their steps (``EpochSteps``): one training pass, the evaluation
of a split and the layer diagnostics, each with one row per member (an ordinary arm is a stack of
one). What happens around them is written here once: the order (train, test, validation when the
split has one, diagnostics, schedule step), the timing, and each member's report with the one
divergence rule (``epoch_report``).

Epoch 0 is the network at initialisation, measured before any optimiser step (``initial_epoch``):
train and test (and validation) loss and accuracy over the full splits in eval mode, and every layer
diagnostic, the gradient norms from one probe batch (``probe_gradients``). It trains nothing, so it
has no time of its own, never ends a run, and leaves the model, the optimiser, the schedule and the
random streams as it found them: epochs 1 and later are the same with it as without it.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import torch

from app.numbers import finite_or_none
from app.spec import TrainingSpec, TrainMetrics
from app.spec_steps import evaluation_steps, examples_trained
from worker.training.datasets import DatasetSplits
from worker.training.diagnostics import GradientFlag, LayerDiagnostics, time_gradient_summary
from worker.training.reports import EpochReport, LayerReport


class EpochSteps(Protocol):
    """The steps of one epoch of one or several members, each answering one row per member."""

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer; its first group's learning rate is the epoch's."""
        ...

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The learning-rate schedule, stepped once after the epoch; None for a constant rate."""
        ...

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """The epoch's (evaluation's) steps, ``trainer.evaluation_batches``: [mean loss, accuracy] over their batches
        per member, a (members, 2) device tensor."""
        ...

    def evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[mean cross-entropy, accuracy] per member over a full split, a (members, 2) device tensor."""
        ...

    def diagnose(self) -> list[LayerDiagnostics]:
        """Every member's layer diagnostics for this epoch."""
        ...

    def probe_gradients(self) -> None:
        """One forward and backward pass of the probe batch per member, for the next ``diagnose``'s gradient norms.

        It steps nothing and leaves no trace (``diagnostics.probe_leaves_no_trace``).
        """
        ...


def _evaluations(steps: EpochSteps, data: DatasetSplits) -> list[list[float]]:
    """Per member: [test loss, accuracy(, validation loss, accuracy)] over the full splits."""
    evaluations = [steps.evaluate(data.test_x, data.test_y)]
    if data.val_x is not None and data.val_y is not None and data.val_x.shape[0] > 0:
        evaluations.append(steps.evaluate(data.val_x, data.val_y))
    return torch.cat(evaluations, dim=1).tolist()


def initial_epoch(steps: EpochSteps, data: DatasetSplits) -> list[EpochReport]:
    """Epoch 0, the network at initialisation: one report per member, in member order, before any step.

    With no batches trained there is no running mean: the train metrics are the whole training split's in eval
    mode whatever ``training.train_metrics`` says, and the row says so (``after_epoch``).
    """
    lr = float(steps.optimizer.param_groups[0]["lr"])
    train_table = steps.evaluate(data.train_x, data.train_y).tolist()
    evaluation_table = _evaluations(steps, data)
    steps.probe_gradients()
    diagnostics = steps.diagnose()
    return [
        epoch_report(
            epoch=0,
            train=(train[0], train[1]),
            evaluation=list(evaluation),
            epoch_seconds=None,
            samples_per_second=None,
            lr=lr,
            layers=layers,
            ratio=ratio,
            flag=flag,
            train_metrics="after_epoch",
            step=0,
        )
        for train, evaluation, (layers, ratio, flag) in zip(train_table, evaluation_table, diagnostics, strict=True)
    ]


def run_epoch(steps: EpochSteps, data: DatasetSplits, *, epoch: int, training: TrainingSpec) -> list[EpochReport]:
    """Train one epoch, evaluate, diagnose and step the schedule; one report per member, in member order.

    With a step budget (``training.steps``) an "epoch" is an evaluation: ``steps.train_epoch(epoch)`` trains the
    steps ``app.spec_steps.evaluation_steps`` gives it, and the rest is the same.

    ``train_metrics`` "after_epoch" replaces the running train loss and accuracy with those of the whole
    training split in eval mode after the epoch's steps. Eval mode under no_grad draws nothing from the random
    stream (dropout is off, batch norm uses its running statistics and does not update them), so the next
    epoch's batch order and dropout masks are those of a "running" run; tests/training/test_training_options.py
    checks it on a net with dropout.

    Epoch 0 is ``initial_epoch``. Each report's ``step`` is the optimiser steps taken so far: ``epoch`` times the
    batches of an epoch of ``batch_size`` (``batch_sizes``), or with a step budget the end of the evaluation's steps.
    """
    if epoch == 0:
        return initial_epoch(steps, data)
    train_metrics = training.train_metrics
    size = data.train_x.shape[0]
    trained = evaluation_steps(training, epoch, size=size)
    started = time.perf_counter()
    lr = float(steps.optimizer.param_groups[0]["lr"])
    # Read here so the time below is the training time alone.
    train_table = steps.train_epoch(epoch).tolist()
    train_seconds = time.perf_counter() - started
    if train_metrics == "after_epoch":
        train_table = steps.evaluate(data.train_x, data.train_y).tolist()
    evaluation_table = _evaluations(steps, data)
    diagnostics = steps.diagnose()
    if steps.scheduler is not None:
        steps.scheduler.step()
    # The whole epoch's wall time: in a stack every member trained for all of it.
    epoch_seconds = time.perf_counter() - started
    examples = examples_trained(trained, size=size, batch_size=training.batch_size)
    samples_per_second = examples / train_seconds if train_seconds > 0 else 0.0
    return [
        epoch_report(
            epoch=epoch,
            train=(train[0], train[1]),
            evaluation=list(evaluation),
            epoch_seconds=epoch_seconds,
            samples_per_second=samples_per_second,
            lr=lr,
            layers=layers,
            ratio=ratio,
            flag=flag,
            train_metrics=train_metrics,
            step=trained.stop,
        )
        for train, evaluation, (layers, ratio, flag) in zip(train_table, evaluation_table, diagnostics, strict=True)
    ]


def epoch_report(
    *,
    epoch: int,
    train: tuple[float, float],
    evaluation: list[float],
    epoch_seconds: float | None,
    samples_per_second: float | None,
    lr: float,
    layers: list[LayerReport],
    ratio: float | None,
    flag: GradientFlag | None,
    train_metrics: TrainMetrics = "running",
    step: int,
) -> EpochReport:
    """One epoch's report from (train loss, accuracy) and [test loss, accuracy(, val loss, accuracy)].

    The one place that decides divergence: any non-finite loss, train, test or validation, of a trained
    epoch (epoch 0 trains nothing, so it cannot diverge; its non-finite losses are stored as missing).
    """
    train_loss, train_accuracy = train
    test_loss, test_accuracy = evaluation[0], evaluation[1]
    val_loss, val_accuracy = (evaluation[2], evaluation[3]) if len(evaluation) > 2 else (None, None)
    losses = [train_loss, test_loss] + ([val_loss] if val_loss is not None else [])
    time_ratio, time_slope, time_flag = time_gradient_summary(layers)
    return EpochReport(
        epoch=epoch,
        train_loss=finite_or_none(train_loss),
        train_accuracy=train_accuracy,
        test_loss=finite_or_none(test_loss),
        test_accuracy=test_accuracy,
        epoch_seconds=epoch_seconds,
        samples_per_second=samples_per_second,
        lr=lr,
        val_loss=finite_or_none(val_loss) if val_loss is not None else None,
        val_accuracy=val_accuracy,
        grad_norm_ratio=ratio,
        gradient_flag=flag,
        time_grad_norm_ratio=time_ratio,
        time_grad_log_slope=time_slope,
        time_gradient_flag=time_flag,
        diverged=epoch > 0 and not all(math.isfinite(loss) for loss in losses),
        layers=layers,
        train_metrics=train_metrics,
        step=step,
    )
