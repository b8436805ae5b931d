"""Epoch 0, the network at initialisation: measured by hand, the same on both trainers, and without a trace."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional

from app.spec import ExperimentSpec
from worker.training import trainer
from worker.training.datasets import load_dataset
from worker.training.reports import ArmOutcome, EpochReport
from worker.training.stacked import train_stacked
from worker.training.stacked import trainer as stacked_trainer
from worker.training.trainer import prepare_arm, train_arm


def make_spec(*, model: dict[str, Any], activations: list[Any], **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": {"name": "spirals", "params": {"samples": 300}},
            "model": model,
            "activations": activations,
            "seeds": [0, 1],
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, **training},
            "device": "cpu",
        }
    )


def numbers(outcome: ArmOutcome) -> list[dict[str, Any]]:
    """The reports without their wall-clock fields."""
    return [
        {
            key: value
            for key, value in dataclasses.asdict(report).items()
            if key not in ("epoch_seconds", "samples_per_second")
        }
        for report in outcome.reports
    ]


def test_epoch_zero_is_the_untrained_network_computed_by_hand() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [6]}, activations=["relu"])
    data = load_dataset(spec.dataset)
    outcome = train_arm(spec, activation_index=0, seed=1, data=data)
    initial = outcome.reports[0]
    assert initial.epoch == 0 and [report.epoch for report in outcome.reports] == [0, 1, 2, 3]

    # The same untrained network, built as the trainer builds it, measured directly.
    state = prepare_arm(spec, activation_index=0, seed=1, data=data, device=torch.device("cpu"))
    model = state.model
    model.eval()
    with torch.no_grad():
        train_logits, test_logits = model(data.train_x), model(data.test_x)
    assert initial.train_loss == pytest.approx(functional.cross_entropy(train_logits, data.train_y).item(), rel=1e-5)
    assert initial.test_loss == pytest.approx(functional.cross_entropy(test_logits, data.test_y).item(), rel=1e-5)
    assert initial.train_accuracy == pytest.approx((train_logits.argmax(1) == data.train_y).double().mean().item())
    assert initial.test_accuracy == pytest.approx((test_logits.argmax(1) == data.test_y).double().mean().item())
    assert initial.lr == pytest.approx(0.05)
    assert initial.epoch_seconds is None and initial.samples_per_second is None and not initial.diverged

    # Gradient norms: one training-mode pass over the first batch_size training examples, per layer.
    model.train()
    model.zero_grad()
    functional.cross_entropy(model(data.train_x[:64]), data.train_y[:64]).backward()
    layers = model.diagnostic_layers()
    grad_norms = [math.sqrt(sum(float(weight.grad.norm()) ** 2 for weight in layer.weights)) for layer in layers]
    weight_norms = [math.sqrt(sum(float(weight.detach().norm()) ** 2 for weight in layer.weights)) for layer in layers]
    assert [layer.grad_norm for layer in initial.layers] == pytest.approx(grad_norms, rel=1e-5)
    assert [layer.weight_norm for layer in initial.layers] == pytest.approx(weight_norms, rel=1e-5)
    assert initial.grad_norm_ratio == pytest.approx(grad_norms[0] / grad_norms[-1], rel=1e-5)

    # Activation statistics and dead units: the hidden ReLU's outputs over the probe set, in eval mode.
    outputs: list[torch.Tensor] = []
    activation = layers[0].activation
    assert activation is not None
    handle = activation.register_forward_hook(lambda _module, _inputs, output: outputs.append(output.detach()))
    model.eval()
    with torch.no_grad():
        model(data.train_x[:1000])
    handle.remove()
    (hidden,) = outputs
    assert initial.layers[0].activation_mean == pytest.approx(hidden.mean().item(), rel=1e-5)
    assert initial.layers[0].activation_std == pytest.approx(hidden.std(unbiased=False).item(), rel=1e-4)
    assert initial.layers[0].dead_fraction == pytest.approx((hidden.amax(dim=0) <= 0).double().mean().item())
    # The trained epochs moved away from it.
    assert outcome.reports[-1].layers[0].weight_norm != pytest.approx(initial.layers[0].weight_norm)


def _without_epoch_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both trainers start at epoch 1, as before epoch 0 existed."""

    def from_epoch_one(state: trainer.ArmState) -> int:
        return state.epochs_completed + 1

    monkeypatch.setattr(trainer, "first_epoch", from_epoch_one)
    monkeypatch.setattr(stacked_trainer, "first_epoch", from_epoch_one)


def test_measuring_epoch_zero_changes_nothing_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dropout draws from the global random stream and batch norm keeps running statistics: the probe pass
    # (training mode) must leave both as it found them.
    unstacked_spec = make_spec(
        model={"kind": "mlp", "hidden": [8, 8], "dropout": 0.3, "norm": "batch"},
        activations=["relu"],
        optimizer="sgd",
        momentum=0.9,
    )
    stacked_spec = make_spec(model={"kind": "mlp", "hidden": [8, 8], "norm": "batch"}, activations=["relu", "prelu"])
    with_initial = train_arm(unstacked_spec, activation_index=0, seed=0)
    stacked_with_initial = train_stacked(stacked_spec, cuda_graphs=False)
    with monkeypatch.context() as patched:
        _without_epoch_zero(patched)
        without = train_arm(unstacked_spec, activation_index=0, seed=0)
        stacked_without = train_stacked(stacked_spec, cuda_graphs=False)
    assert [report.epoch for report in without.reports] == [1, 2, 3]
    assert numbers(with_initial)[1:] == numbers(without)
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in stacked_without)
    for measured, skipped in zip(stacked_with_initial, stacked_without, strict=True):
        assert [report.epoch for report in measured.reports] == [0, 1, 2, 3]
        assert numbers(measured)[1:] == numbers(skipped)


@pytest.mark.parametrize("stacked", [False, True])
def test_a_run_resumed_after_epoch_zero_does_not_measure_it_again(stacked: bool, tmp_path: Path) -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu", "tanh"])
    members = [(0, 0), (1, 0)]
    paths: list[Path | None] = [tmp_path / f"member{index}.pt" for index in range(len(members))]

    def train(on_epoch: Any, paths: list[Path | None] = paths) -> list[ArmOutcome]:
        if stacked:
            return train_stacked(spec, members=members, checkpoint_paths=paths, on_epoch=on_epoch, cuda_graphs=False)
        return [
            train_arm(
                spec,
                activation_index=index,
                seed=seed,
                checkpoint_path=path,
                on_epoch=(lambda report: on_epoch([(0, report)])) if on_epoch is not None else None,
            )
            for (index, seed), path in zip(members, paths, strict=True)
        ]

    seen: list[int] = []

    def stop_after_epoch_zero(reports: list[tuple[int, EpochReport]]) -> bool:
        seen.extend(report.epoch for _, report in reports)
        return False

    stopped = train(stop_after_epoch_zero)
    assert seen == [0, 0] and all(outcome.status == "cancelled" for outcome in stopped)
    assert all(outcome.epochs_completed == 0 for outcome in stopped)
    seen.clear()
    resumed = train(lambda reports: seen.extend(report.epoch for _, report in reports))
    # Epoch 0 came from the checkpoint; training went on from epoch 1.
    assert sorted(seen) == [1, 1, 2, 2, 3, 3]
    assert all(outcome.status == "succeeded" and outcome.epochs_completed == 3 for outcome in resumed)
    uninterrupted = train(None, [None] * len(members))
    for outcome, expected in zip(resumed, uninterrupted, strict=True):
        assert [report.epoch for report in outcome.reports] == [0, 1, 2, 3]
        assert numbers(outcome) == numbers(expected)
