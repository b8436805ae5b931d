"""The training engine: one arm (activation x seed) at a time on in-memory tensors.

Seeds: ``torch.manual_seed(seed)`` right before the model is built and initialised fixes
the initial weights (and the dropout stream after it); the batch order of each epoch comes
from a separate generator seeded from (seed, epoch) alone, so arms with the same seed see
the same batches in the same order whatever their activation, and a resumed arm gets the
order it would have had. Batches are index slices of a permutation of tensors already on
the device; metrics are summed on the device and read once per epoch. Epoch 0, the network at
initialisation, is measured before the first step (``worker.training.epochs.initial_epoch``) without
touching the random stream, so epochs 1 and later are what they were before it existed. With a step
budget (``training.steps``) an epoch is an evaluation, trained on the steps ``evaluation_batches`` gives
it from the same data epochs' batches.

The steps are separate functions so that the stacked trainer (``worker.training.stacked``)
shares them: ``prepare_arm`` builds each member, the epoch body is ``worker.training.epochs.run_epoch``
(here over ``ArmEpoch``, a stack of one), ``record_epoch`` is the one outcome rule (diverged,
succeeded) and the checkpoints are one format for both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from app.spec import ActivationSpec, Arm, ExperimentSpec, TrainingSpec
from app.spec_cost import EVALUATION_BATCH_SIZE
from app.spec_steps import batch_sizes, data_epochs, evaluation_steps
from worker.training.datasets import DatasetSplits, load_dataset
from worker.training.diagnostics import (
    GradientFlowMonitor,
    LayerDiagnostics,
    gradient_probe_batch,
    probe_inputs,
    probe_leaves_no_trace,
)
from worker.training.epochs import run_epoch
from worker.training.init import initialise
from worker.training.models import ActivationNetwork, build_model
from worker.training.reports import ArmOutcome, ArmStatus, EpochReport, LayerReport, RunInfo
from worker.training.robustness import spec_robustness

CHECKPOINT_FORMAT = 1

Scheduler = torch.optim.lr_scheduler.LRScheduler


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'auto' (or None) is cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here; use 'cpu' or 'auto'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', got {name!r}")
    return device


def training_data(
    spec: ExperimentSpec, *, device: str | torch.device | None, data: DatasetSplits | None
) -> tuple[torch.device, DatasetSplits]:
    """The device to train on (``device``, else the spec's) and the data there: ``data``, or the spec's dataset."""
    target = resolve_device(device if device is not None else spec.device)
    if data is None:
        return target, load_dataset(spec.dataset, validation_fraction=spec.training.validation_fraction, device=target)
    return target, data.to(target)


def order_seed(seed: int, epoch: int) -> int:
    """The batch-order generator seed of one (seed, epoch) pair, independent of everything else."""
    digest = hashlib.sha256(f"batch-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def batch_indices(*, seed: int, epoch: int, size: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """The epoch's batches as index tensors on the device; a last batch of one example joins the one before."""
    generator = torch.Generator().manual_seed(order_seed(seed, epoch))
    order = torch.randperm(size, generator=generator).to(device)
    return list(order.split(batch_sizes(size, batch_size)))


def evaluation_batches(
    training: TrainingSpec, *, seed: int, evaluation: int, size: int, device: torch.device
) -> list[torch.Tensor]:
    """The batches evaluation (epoch) ``evaluation`` trains on, as index tensors on the device; both trainers' one rule.

    With epochs, data epoch ``evaluation``'s batches (``batch_indices``); with a step budget, the global steps
    ``app.spec_steps.evaluation_steps`` gives, taken from the data epochs they fall in, each shuffled by
    ``batch_indices`` as in epochs mode. The position follows from the evaluation number, so a run resumed after
    evaluation k continues at the step where k ended, on the batches it would have had.
    """
    batches: list[torch.Tensor] = []
    steps = evaluation_steps(training, evaluation, size=size)
    for data_epoch, taken in data_epochs(steps, size=size, batch_size=training.batch_size):
        epoch_batches = batch_indices(
            seed=seed, epoch=data_epoch, size=size, batch_size=training.batch_size, device=device
        )
        batches.extend(epoch_batches[taken])
    return batches


def build_optimizer(parameters: Iterable[nn.Parameter], training: TrainingSpec) -> torch.optim.Optimizer:
    """The spec's optimizer over these parameters (its internals are torch's defaults unless a v2 spec sets them)."""
    parameter_list = list(parameters)
    lr, decay = training.lr, training.weight_decay
    if training.optimizer in ("adam", "adamw"):
        adam = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
        beta1, beta2 = training.betas
        return adam(parameter_list, lr=lr, betas=(beta1, beta2), eps=training.eps, weight_decay=decay)
    if training.optimizer == "sgd":
        momentum, dampening, nesterov = training.momentum, training.dampening, training.nesterov
        return torch.optim.SGD(
            parameter_list, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=decay
        )
    if training.optimizer == "rmsprop":
        alpha, eps, momentum = training.alpha, training.eps, training.momentum
        return torch.optim.RMSprop(parameter_list, lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=decay)
    raise ValueError(f"unknown optimizer {training.optimizer!r}; allowed: adam, adamw, sgd, rmsprop")


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSpec) -> Scheduler | None:
    """The spec's learning-rate schedule, stepped once per epoch (per evaluation with a step budget); None for a
    constant rate."""
    if training.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=training.step_size, gamma=training.gamma)
    if training.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=training.evaluations)
    return None


@dataclass
class ArmState:
    """One arm being trained: its model, optimizer, monitor and progress so far."""

    spec: ExperimentSpec
    activation_index: int
    activation: ActivationSpec
    seed: int
    device: torch.device
    model: ActivationNetwork
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    monitor: GradientFlowMonitor
    info: RunInfo
    epochs_completed: int = 0
    reports: list[EpochReport] = field(default_factory=list)
    training_seconds: float = 0.0
    diverged_epoch: int | None = None


def prepare_arm(
    spec: ExperimentSpec, *, activation_index: int, seed: int, data: DatasetSplits, device: torch.device
) -> ArmState:
    """Build, initialise and place the arm's model with its optimizer, schedule and diagnostics monitor."""
    if not 0 <= activation_index < len(spec.activations):
        raise ValueError(f"activation_index must be in 0..{len(spec.activations) - 1}, got {activation_index}")
    activation = spec.activations[activation_index]
    torch.manual_seed(seed)
    model = build_model(spec, activation, input_shape=data.input_shape, classes=data.classes)
    init_scheme = initialise(model, scheme=spec.training.init, activation=activation)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), spec.training)
    monitor = GradientFlowMonitor(
        model.diagnostic_layers(),
        activation=activation,
        probe=probe_inputs(data.train_x).to(device),
        probe_labels=probe_inputs(data.train_y).to(device),
    )
    info = RunInfo(
        init_scheme=init_scheme,
        parameter_count=model.parameter_count(),
        device=str(device),
        activation_placement=model.activation_placement,
        time_gradients=model.time_gradients,
    )
    return ArmState(
        spec=spec,
        activation_index=activation_index,
        activation=activation,
        seed=seed,
        device=device,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, spec.training),
        monitor=monitor,
        info=info,
    )


def train_epoch(state: ArmState, inputs: torch.Tensor, labels: torch.Tensor, *, epoch: int) -> torch.Tensor:
    """The epoch's (evaluation's) batches, ``evaluation_batches``; [mean loss, accuracy] over them as a device
    tensor (no host sync)."""
    model, optimizer = state.model, state.optimizer
    clip = state.spec.training.grad_clip
    model.train()
    loss_sum = torch.zeros((), device=state.device)
    correct = torch.zeros((), device=state.device, dtype=torch.long)
    batches = evaluation_batches(
        state.spec.training, seed=state.seed, evaluation=epoch, size=inputs.shape[0], device=state.device
    )
    for indices in batches:
        batch_inputs, batch_labels = inputs[indices], labels[indices]
        logits = model(batch_inputs)
        loss = functional.cross_entropy(logits, batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.monitor.record_gradients()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        loss_sum += loss.detach() * batch_labels.shape[0]
        correct += (logits.detach().argmax(dim=1) == batch_labels).sum()
    examples = max(sum(len(indices) for indices in batches), 1)
    return torch.stack([loss_sum / examples, correct.to(loss_sum.dtype) / examples])


def evaluate(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = EVALUATION_BATCH_SIZE
) -> torch.Tensor:
    """[mean cross-entropy, accuracy] over a full split in eval mode, as a device tensor."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=inputs.device, dtype=torch.float64)
    correct = torch.zeros((), device=inputs.device, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[start : start + batch_size])
            batch_labels = labels[start : start + batch_size]
            loss_sum += functional.cross_entropy(logits, batch_labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == batch_labels).sum()
    model.train(was_training)
    examples = max(inputs.shape[0], 1)
    return torch.stack([loss_sum / examples, correct.double() / examples])


@dataclass
class ArmEpoch:
    """The ``EpochSteps`` of one arm: a stack of one member."""

    state: ArmState
    data: DatasetSplits

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The arm's optimizer."""
        return self.state.optimizer

    @property
    def scheduler(self) -> Scheduler | None:
        """The arm's learning-rate schedule."""
        return self.state.scheduler

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """[[mean loss, accuracy]] of one pass over the training set."""
        return train_epoch(self.state, self.data.train_x, self.data.train_y, epoch=epoch).unsqueeze(0)

    def evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[[mean cross-entropy, accuracy]] over a full split."""
        return evaluate(self.state.model, inputs, labels).unsqueeze(0)

    def diagnose(self) -> list[LayerDiagnostics]:
        """The arm's layer diagnostics for this epoch."""
        return [self.state.monitor.epoch_layers(self.state.model)]

    def probe_gradients(self) -> None:
        """Epoch 0's gradient norms: one training-mode forward and backward pass of the probe batch, no step."""
        state, model = self.state, self.state.model
        batch = gradient_probe_batch(self.data.train_x.shape[0], state.spec.training.batch_size)
        with probe_leaves_no_trace(model, state.device):
            model.train()
            loss = functional.cross_entropy(model(self.data.train_x[batch]), self.data.train_y[batch])
            model.zero_grad(set_to_none=True)
            loss.backward()
            state.monitor.record_gradients()


def first_epoch(state: ArmState) -> int:
    """The next epoch to run: 0 (the network at initialisation) for a fresh arm, else the one after the last."""
    return state.epochs_completed + 1 if state.reports else 0


def record_epoch(state: ArmState, report: EpochReport) -> ArmStatus | None:
    """Add an epoch's report to the arm's progress; how the arm ends when this epoch ends it, else None.

    The one outcome rule of both trainers: a diverged epoch ends the arm as diverged, the last
    epoch of the spec (its last evaluation with a step budget) as succeeded.
    """
    state.reports.append(report)
    state.epochs_completed = report.epoch
    state.training_seconds += report.epoch_seconds or 0.0
    if report.diverged:
        state.diverged_epoch = report.epoch
        return "diverged"
    if report.epoch == state.spec.training.evaluations:
        return "succeeded"
    return None


def finished_status(saved: str) -> ArmStatus | None:
    """The end a checkpoint's saved status records (succeeded or diverged); None for an arm still running."""
    if saved == "succeeded":
        return "succeeded"
    if saved == "diverged":
        return "diverged"
    return None


def arm_outcome(state: ArmState, status: ArmStatus, *, data: DatasetSplits | None = None) -> ArmOutcome:
    """How the arm ended, with its progress so far.

    A succeeded arm given its ``data`` is evaluated on the test set under the spec's evaluation block
    (``worker.training.robustness``): once, from its final weights, also when it was resumed from a checkpoint
    of its end, so a run that crashed after its last epoch gets the same points when it is taken up again.
    """
    robustness = []
    if status == "succeeded" and data is not None and state.spec.evaluation is not None:
        robustness = spec_robustness(state.spec, state.model, data.test_x, data.test_y, seed=state.seed)
    return ArmOutcome(
        status=status,
        epochs_completed=state.epochs_completed,
        diverged_epoch=state.diverged_epoch,
        info=state.info,
        training_seconds=state.training_seconds,
        reports=list(state.reports),
        robustness=robustness,
    )


def _comparable_spec_hash(spec: ExperimentSpec) -> str:
    # A checkpoint may resume on another device, and after seeds were added to the experiment
    # (POST /v1/experiments/{id}/seeds: the arm's own seed is checked apart); everything else must match.
    return spec.model_copy(update={"device": "auto", "seeds": [0]}).spec_hash()


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


class CheckpointClock:
    """When to write a checkpoint: every ``interval`` seconds at most (0: every time), and always when stopping."""

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"checkpoint_interval must be at least 0 seconds, got {interval}")
        self.interval = interval
        self.last = self.now()

    @staticmethod
    def now() -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def due(self, *, final: bool = False) -> bool:
        """Whether to save now; ``final`` (a run stopping early) always saves."""
        return final or self.interval == 0 or self.now() - self.last >= self.interval

    def saved(self) -> None:
        """Start the next interval."""
        self.last = self.now()


def save_checkpoint(
    path: Path, state: ArmState, *, status: str, rng_state: dict[str, torch.Tensor] | None = None
) -> None:
    """Atomically write the arm's full training state (model, optimizer, schedule, RNG, reports) to ``path``."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "spec_hash": _comparable_spec_hash(state.spec),
        "activation_index": state.activation_index,
        "seed": state.seed,
        "status": status,
        "epochs_completed": state.epochs_completed,
        "diverged_epoch": state.diverged_epoch,
        "training_seconds": state.training_seconds,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "rng": rng_state if rng_state is not None else _rng_state(state.device),
        "reports": [dataclasses.asdict(report) for report in state.reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _report_from_dict(values: dict[str, Any]) -> EpochReport:
    layers = [LayerReport(**layer) for layer in values.get("layers", [])]
    return EpochReport(**{**values, "layers": layers})


def load_checkpoint(path: Path, state: ArmState) -> str:
    """Restore ``state`` from a checkpoint written by ``save_checkpoint``; returns the saved status."""
    payload = torch.load(path, map_location=state.device, weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    expected = (_comparable_spec_hash(state.spec), state.activation_index, state.seed)
    found = (payload["spec_hash"], payload["activation_index"], payload["seed"])
    if found != expected:
        raise ValueError(
            f"checkpoint {path} belongs to another run (spec/activation_index/seed differ); remove it to start over"
        )
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    if state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng"]["cpu"].cpu())
    if state.device.type == "cuda" and "cuda" in payload["rng"]:
        torch.cuda.set_rng_state(payload["rng"]["cuda"].cpu(), state.device)
    state.epochs_completed = int(payload["epochs_completed"])
    state.diverged_epoch = payload["diverged_epoch"]
    state.training_seconds = float(payload["training_seconds"])
    state.reports = [_report_from_dict(report) for report in payload["reports"]]
    return str(payload["status"])


def train_arm(
    spec: ExperimentSpec,
    *,
    activation_index: int,
    seed: int,
    device: str | torch.device | None = None,
    data: DatasetSplits | None = None,
    on_start: Callable[[RunInfo], None] | None = None,
    on_epoch: Callable[[EpochReport], bool | None] | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_interval: float = 0.0,
) -> ArmOutcome:
    """Train one (activation, seed) arm; on_epoch returning False cancels; a checkpoint file is resumed from.

    With a ``checkpoint_path`` the arm's state is saved after an epoch once ``checkpoint_interval`` seconds
    have passed since the last save (0: after every epoch, the last included), and always when it is
    cancelled. A crash loses at most the interval's worth of training.
    """
    target, data = training_data(spec, device=device, data=data)
    state = prepare_arm(spec, activation_index=activation_index, seed=seed, data=data, device=target)
    saved = "running"
    if checkpoint_path is not None and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path, state)
    if on_start is not None:
        on_start(state.info)
    finished = finished_status(saved)
    if finished is not None:
        return arm_outcome(state, finished, data=data)
    checkpoints = CheckpointClock(checkpoint_interval)
    steps = ArmEpoch(state, data)
    for epoch in range(first_epoch(state), spec.training.evaluations + 1):
        (report,) = run_epoch(steps, data, epoch=epoch, training=spec.training)
        ended = record_epoch(state, report)
        # The callback must not shift the random stream a resumed run continues from.
        rng_state = _rng_state(state.device)
        keep_going = on_epoch(report) if on_epoch is not None else None
        # A run that stops early is always saved, to be resumed; the end of a run is recorded by the caller
        # (on_epoch has its last report), so it is saved only when due like any other epoch.
        if checkpoint_path is not None and checkpoints.due(final=keep_going is False and ended is None):
            save_checkpoint(checkpoint_path, state, status=ended or "running", rng_state=rng_state)
            checkpoints.saved()
        if ended is not None:
            return arm_outcome(state, ended, data=data)
        if keep_going is False:
            return arm_outcome(state, "cancelled")
    return arm_outcome(state, "succeeded", data=data)


@dataclass
class ArmResult:
    """One arm of an experiment and how it ended."""

    arm: Arm
    outcome: ArmOutcome


def train_experiment(
    spec: ExperimentSpec,
    *,
    device: str | torch.device | None = None,
    data: DatasetSplits | None = None,
    on_arm_start: Callable[[Arm, RunInfo], None] | None = None,
    on_epoch: Callable[[Arm, EpochReport], bool | None] | None = None,
    on_arm_end: Callable[[Arm, ArmOutcome], None] | None = None,
) -> list[ArmResult]:
    """Train every arm in ``spec.arms()`` order on data loaded once; on_epoch returning False stops the experiment."""
    target, data = training_data(spec, device=device, data=data)
    results: list[ArmResult] = []
    for arm in spec.arms():

        def started(info: RunInfo, arm: Arm = arm) -> None:
            if on_arm_start is not None:
                on_arm_start(arm, info)

        def finished_epoch(report: EpochReport, arm: Arm = arm) -> bool | None:
            return on_epoch(arm, report) if on_epoch is not None else None

        outcome = train_arm(
            spec,
            activation_index=arm.activation_index,
            seed=arm.seed,
            device=target,
            data=data,
            on_start=started,
            on_epoch=finished_epoch,
        )
        results.append(ArmResult(arm, outcome))
        if on_arm_end is not None:
            on_arm_end(arm, outcome)
        if outcome.status == "cancelled":
            break
    return results
