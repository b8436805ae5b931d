"""The trainer: determinism, shared batch order, divergence, cancel, checkpoint resume, learning."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from app.spec import ExperimentSpec
from worker.training import trainer
from worker.training.reports import EpochReport, RunInfo
from worker.training.trainer import resolve_device, train_arm, train_experiment

TIMING_FIELDS = ("epoch_seconds", "samples_per_second")


def make_spec(
    *,
    model: dict[str, Any] | None = None,
    activations: list[Any] | None = None,
    dataset: str = "spirals",
    seeds: list[int] | None = None,
    **training: Any,
) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": dataset},
            "model": model or {"kind": "mlp", "hidden": [16, 16]},
            "activations": activations or ["relu"],
            "seeds": seeds or [0],
            "training": {"epochs": 2, "batch_size": 128, **training},
            "device": "cpu",
        }
    )


def comparable(reports: list[EpochReport]) -> list[dict[str, Any]]:
    """Reports without wall-clock fields."""
    rows = []
    for report in reports:
        row = dataclasses.asdict(report)
        for name in TIMING_FIELDS:
            row.pop(name)
        rows.append(row)
    return rows


def test_same_spec_and_seed_give_bit_identical_metrics() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [16, 16], "dropout": 0.2, "norm": "batch"})
    first = train_arm(spec, activation_index=0, seed=4)
    second = train_arm(spec, activation_index=0, seed=4)
    other_seed = train_arm(spec, activation_index=0, seed=5)
    assert comparable(first.reports) == comparable(second.reports)
    assert comparable(first.reports) != comparable(other_seed.reports)


def test_arms_with_the_same_seed_see_the_same_batches_in_the_same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[torch.Tensor]] = {}
    original = trainer.build_model

    def recording_build_model(spec: ExperimentSpec, activation: Any, **kwargs: Any) -> nn.Module:
        model = original(spec, activation, **kwargs)
        batches = seen.setdefault(f"{activation.display_label}", [])

        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                batches.append(inputs[0].clone())

        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(trainer, "build_model", recording_build_model)
    spec = make_spec(activations=["relu", "tanh"], seeds=[3])
    train_arm(spec, activation_index=0, seed=3)
    train_arm(spec, activation_index=1, seed=3)
    relu, tanh = seen["relu"], seen["tanh"]
    # Epoch 0's gradient probe (the first 128 training examples), then 1600 spirals examples in batches of 128,
    # two epochs.
    assert len(relu) == len(tanh) == 1 + 2 * 13
    assert all(torch.equal(left, right) for left, right in zip(relu, tanh, strict=True))
    # Each epoch reshuffles.
    assert not torch.equal(relu[1], relu[14])


def test_a_non_finite_loss_ends_the_arm_as_diverged_not_as_an_error() -> None:
    spec = make_spec(activations=[{"name": "custom", "expression": "exp(1000 * x)"}], epochs=3)
    reports: list[EpochReport] = []
    outcome = train_arm(spec, activation_index=0, seed=0, on_epoch=reports.append)
    assert outcome.status == "diverged"
    assert outcome.diverged_epoch == 1
    assert outcome.epochs_completed == 1
    # Epoch 0 (before training) has the non-finite losses already, but only a trained epoch diverges.
    assert [report.epoch for report in reports] == [0, 1]
    assert not reports[0].diverged and reports[0].train_loss is None
    assert reports[1].diverged
    assert reports[1].train_loss is None
    assert 0.0 <= reports[1].test_accuracy <= 1.0


def test_on_epoch_returning_false_cancels_the_arm() -> None:
    spec = make_spec(epochs=4)
    seen: list[int] = []

    def stop_at_once(report: EpochReport) -> bool:
        seen.append(report.epoch)
        return False

    # The first answer comes after epoch 0, the network at initialisation: cancelled before any training.
    outcome = train_arm(spec, activation_index=0, seed=0, on_epoch=stop_at_once)
    assert outcome.status == "cancelled"
    assert outcome.epochs_completed == 0
    assert seen == [0] and [report.epoch for report in outcome.reports] == [0]


def test_a_resumed_arm_finishes_exactly_like_an_uninterrupted_one(tmp_path: Path) -> None:
    spec = make_spec(
        model={"kind": "mlp", "hidden": [16, 16], "dropout": 0.3, "norm": "batch"},
        activations=[{"name": "prelu"}],
        epochs=4,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        nesterov=True,
        schedule="step",
        step_size=1,
        gamma=0.5,
        grad_clip=1.0,
    )
    uninterrupted = train_arm(spec, activation_index=0, seed=1)

    checkpoint = tmp_path / "arm.pt"
    first_part: list[int] = []

    def stop_after_two(report: EpochReport) -> bool:
        first_part.append(report.epoch)
        return report.epoch < 2

    stopped = train_arm(spec, activation_index=0, seed=1, on_epoch=stop_after_two, checkpoint_path=checkpoint)
    assert stopped.status == "cancelled" and first_part == [0, 1, 2]
    assert checkpoint.exists()

    second_part: list[int] = []
    infos: list[RunInfo] = []
    resumed = train_arm(
        spec,
        activation_index=0,
        seed=1,
        on_epoch=lambda report: second_part.append(report.epoch),
        on_start=infos.append,
        checkpoint_path=checkpoint,
    )
    assert second_part == [3, 4]
    assert resumed.status == "succeeded" and resumed.epochs_completed == 4
    assert comparable(resumed.reports) == comparable(uninterrupted.reports)
    assert infos and infos[0].parameter_count == uninterrupted.info.parameter_count  # type: ignore[union-attr]

    # A finished checkpoint trains nothing more.
    again: list[int] = []
    finished = train_arm(
        spec, activation_index=0, seed=1, on_epoch=lambda report: again.append(report.epoch), checkpoint_path=checkpoint
    )
    assert again == [] and finished.status == "succeeded"


class FakeClock:
    """time.monotonic for the trainer, advanced by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_checkpoints_are_written_at_most_every_interval_and_always_when_the_run_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(epochs=7)
    clock = FakeClock()
    monkeypatch.setattr(trainer.CheckpointClock, "now", clock)
    saved: list[tuple[int, str]] = []
    real_save = trainer.save_checkpoint

    def recording_save(path: Path, state: Any, *, status: str, **options: Any) -> None:
        saved.append((state.epochs_completed, status))
        real_save(path, state, status=status, **options)

    monkeypatch.setattr(trainer, "save_checkpoint", recording_save)

    def epoch_of_seconds(seconds: float) -> Callable[[EpochReport], None]:
        def advance(report: EpochReport) -> None:
            # Epoch 0 (the network at initialisation) trains nothing: no time to speak of.
            if report.epoch > 0:
                clock.now += seconds

        return advance

    # 4 s epochs, 10 s interval: saved after epoch 3 (12 s) and 6 (24 s). The end (epoch 7, 4 s later) is not
    # due: the caller records it from the last report.
    train_arm(
        spec,
        activation_index=0,
        seed=0,
        on_epoch=epoch_of_seconds(4.0),
        checkpoint_path=tmp_path / "a.pt",
        checkpoint_interval=10.0,
    )
    assert saved == [(3, "running"), (6, "running")]

    # Interval 0: after every epoch, epoch 0 and the end included. A cancelled run saves where it stopped, whatever
    # the interval.
    saved.clear()
    train_arm(spec, activation_index=0, seed=0, checkpoint_path=tmp_path / "b.pt", checkpoint_interval=0)
    assert saved == [(epoch, "running") for epoch in range(0, 7)] + [(7, "succeeded")]
    saved.clear()
    stopped = train_arm(
        spec,
        activation_index=0,
        seed=0,
        on_epoch=lambda report: report.epoch < 2,
        checkpoint_path=tmp_path / "c.pt",
        checkpoint_interval=3600,
    )
    assert stopped.status == "cancelled" and saved == [(2, "running")]
    with pytest.raises(ValueError, match="checkpoint_interval"):
        train_arm(spec, activation_index=0, seed=0, checkpoint_path=tmp_path / "d.pt", checkpoint_interval=-1)


def test_a_run_that_crashes_between_checkpoints_resumes_from_the_last_one_to_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(epochs=5)
    uninterrupted = train_arm(spec, activation_index=0, seed=2)
    clock = FakeClock()
    monkeypatch.setattr(trainer.CheckpointClock, "now", clock)
    checkpoint = tmp_path / "arm.pt"

    def crash_in_epoch_four(report: EpochReport) -> None:
        clock.now += 6.0 if report.epoch > 0 else 0.0
        if report.epoch == 4:
            raise RuntimeError("the process dies")

    with pytest.raises(RuntimeError, match="dies"):
        train_arm(
            spec,
            activation_index=0,
            seed=2,
            on_epoch=crash_in_epoch_four,
            checkpoint_path=checkpoint,
            checkpoint_interval=10.0,
        )
    # The last checkpoint is epoch 2's (12 s): epochs 3 and 4 train again, to the same numbers.
    retrained: list[int] = []
    resumed = train_arm(
        spec,
        activation_index=0,
        seed=2,
        on_epoch=lambda report: retrained.append(report.epoch),
        checkpoint_path=checkpoint,
        checkpoint_interval=10.0,
    )
    assert retrained == [3, 4, 5]
    assert comparable(resumed.reports) == comparable(uninterrupted.reports)


def test_a_checkpoint_of_another_arm_is_refused(tmp_path: Path) -> None:
    spec = make_spec(epochs=1)
    checkpoint = tmp_path / "arm.pt"
    train_arm(spec, activation_index=0, seed=0, checkpoint_path=checkpoint)
    with pytest.raises(ValueError, match="another run"):
        train_arm(spec, activation_index=0, seed=1, checkpoint_path=checkpoint)


@pytest.mark.parametrize(
    "training",
    [
        {"optimizer": "adam", "weight_decay": 1e-4},
        {"optimizer": "adamw", "weight_decay": 1e-2},
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        {"optimizer": "rmsprop", "momentum": 0.5},
    ],
)
def test_every_optimizer_learns_spirals_above_chance(training: dict[str, Any]) -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [32, 32]}, epochs=3, batch_size=64, **training)
    outcome = train_arm(spec, activation_index=0, seed=0)
    assert outcome.status == "succeeded"
    assert outcome.reports[-1].train_loss is not None
    assert outcome.reports[-1].train_loss < outcome.reports[0].train_loss  # type: ignore[operator]
    assert outcome.reports[-1].test_accuracy > 0.4  # three classes: chance is 1/3


def test_schedules_report_the_learning_rate_each_epoch_used() -> None:
    step = train_arm(make_spec(epochs=3, lr=0.1, schedule="step", step_size=2, gamma=0.5), activation_index=0, seed=0)
    # Epoch 0 reports the rate the first epoch starts with.
    assert [report.lr for report in step.reports] == pytest.approx([0.1, 0.1, 0.1, 0.05])
    cosine = train_arm(make_spec(epochs=3, lr=0.1, schedule="cosine"), activation_index=0, seed=0)
    assert [report.lr for report in cosine.reports] == pytest.approx([0.1, 0.1, 0.075, 0.025])


def test_validation_metrics_appear_only_with_a_validation_split() -> None:
    initial, with_split = train_arm(make_spec(epochs=1, validation_fraction=0.2), activation_index=0, seed=0).reports
    without = train_arm(make_spec(epochs=1), activation_index=0, seed=0).reports[1]
    assert with_split.val_loss is not None and with_split.val_accuracy is not None
    assert initial.val_loss is not None and initial.val_accuracy is not None
    assert without.val_loss is None and without.val_accuracy is None
    assert with_split.samples_per_second is not None and with_split.samples_per_second > 0
    assert with_split.epoch_seconds is not None and with_split.epoch_seconds > 0
    # Epoch 0 trains nothing: no time, no throughput.
    assert initial.epoch_seconds is None and initial.samples_per_second is None


def test_an_mlp_learns_mnist1d_well_above_chance() -> None:
    spec = make_spec(dataset="mnist1d", model={"kind": "mlp", "hidden": [128, 128]}, epochs=5, lr=0.003)
    outcome = train_arm(spec, activation_index=0, seed=0)
    assert outcome.status == "succeeded"
    assert outcome.reports[-1].test_accuracy > 0.4  # ten classes: chance is 0.1


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "cnn", "channels": [4], "hidden": [8], "norm": "batch"},
        {"kind": "rnn", "cell": "rnn", "hidden_size": 8},
        {"kind": "rnn", "cell": "lstm", "hidden_size": 8, "head_hidden": 8},
    ],
)
def test_cnn_and_rnn_arms_train_and_report_their_run_info(model: dict[str, Any]) -> None:
    spec = make_spec(dataset="digits", model=model, epochs=1, batch_size=256)
    infos: list[RunInfo] = []
    outcome = train_arm(spec, activation_index=0, seed=0, on_start=infos.append)
    assert outcome.status == "succeeded"
    assert infos[0].device == "cpu" and infos[0].parameter_count > 0 and infos[0].init_scheme
    expected = {"cnn": "hidden layers", "rnn": "recurrence", "lstm": "head"}
    assert infos[0].activation_placement == expected[model.get("cell", model["kind"])]
    assert [layer.layer_name for layer in outcome.reports[0].layers][-1] == "output"


def test_train_experiment_runs_every_arm_on_data_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    original = trainer.load_dataset

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        loads.append("load")
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "load_dataset", counting_load)
    spec = make_spec(activations=["relu", "tanh"], seeds=[0, 1], epochs=1)
    epochs: list[tuple[str, int, int]] = []
    results = train_experiment(spec, on_epoch=lambda arm, report: epochs.append((arm.label, arm.seed, report.epoch)))
    assert loads == ["load"]
    assert [(result.arm.label, result.arm.seed, result.outcome.status) for result in results] == [
        ("relu", 0, "succeeded"),
        ("relu", 1, "succeeded"),
        ("tanh", 0, "succeeded"),
        ("tanh", 1, "succeeded"),
    ]
    assert epochs == [(label, seed, epoch) for label in ("relu", "tanh") for seed in (0, 1) for epoch in (0, 1)]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
