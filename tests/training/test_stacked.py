"""Stacked training: the same arms stacked and unstacked give the same per-epoch metrics and diagnostics.

Tolerance. Stacked linear layers run as one batched matmul (``baddbmm``) and conv layers as one grouped
convolution; both sum in another order than the unstacked ``addmm``/convolution kernels, so float32
results differ in the last bits and the difference grows with every step. Measured on CPU after 3
epochs (spirals, digits and mnist1d models below): relative differences of at most 4e-7 in losses,
gradient norms, weight norms and learnable activation parameters, and 6e-6 in activation means (values
near zero). The tests allow rtol 1e-4 with atol 1e-6, over 100x the measured drift and far below any
difference a user would read into. Accuracies and dead/saturated fractions are counts: they came out
identical, and the tests allow one example or one unit of slack in case a value sits on a boundary.

Not compared exactly on purpose: BatchNorm with Adam/RMSprop. The bias of a layer followed by BatchNorm
has a true gradient of zero, so its computed gradient is rounding noise, which Adam/RMSprop scale to full
learning-rate steps; that bias, and with it BatchNorm's running mean and the eval-mode metrics, then
follows the rounding noise in any implementation. BatchNorm is compared with SGD, where it matches.

Device. The tests run on the CPU. ``ACTLAB_TEST_DEVICE=cuda`` runs the same tests on a GPU, stacked training
with its CUDA-graph capture (``ACTLAB_TEST_CUDA_GRAPHS=0`` turns the capture off). There TF32 is turned off
and cuDNN made deterministic for these tests: TF32 rounds convolution inputs to 10 bits of mantissa, so
stacked (grouped) and unstacked convolutions would differ by about 1e-3, which says nothing about stacking.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from app.spec import ExperimentSpec
from worker.training import trainer
from worker.training.datasets import DatasetSplits, load_dataset
from worker.training.models import ActivationNetwork, build_model
from worker.training.reports import ArmOutcome, EpochReport, RunInfo
from worker.training.stacked import (
    build_stacked_model,
    can_stack,
    copy_member_into,
    group_members,
    member_memory_bytes,
    stacking_recommended,
    train_stacked,
)
from worker.training.stacked import trainer as stacked_trainer
from worker.training.trainer import train_arm

DEVICE = os.environ.get("ACTLAB_TEST_DEVICE", "cpu")
CUDA_GRAPHS = os.environ.get("ACTLAB_TEST_CUDA_GRAPHS", "1") != "0"
RTOL = 1e-4
ATOL = 1e-6
FLOAT_FIELDS = ("train_loss", "test_loss", "val_loss", "grad_norm_ratio", "lr")
LAYER_FLOAT_FIELDS = ("grad_norm", "weight_norm", "activation_mean", "activation_std")
LAYER_COUNT_FIELDS = ("dead_fraction", "saturated_fraction")

LEARNABLE_ACTIVATIONS: list[Any] = [
    "relu",
    "tanh",
    {"name": "prelu", "params": {"mode": "unit"}},
    "swish_beta",
    "pau",
    {"name": "custom", "expression": "x * sigmoid(b * x)", "learnable": {"b": 1.5}, "label": "swish_custom"},
    "sigmoid",
]


def make_spec(
    *,
    model: dict[str, Any],
    activations: list[Any],
    seeds: list[int],
    dataset: dict[str, Any] | None = None,
    **training: Any,
) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "dataset": dataset or {"name": "spirals", "params": {"samples": 500}},
            "model": model,
            "activations": activations,
            "seeds": seeds,
            "training": {"epochs": 3, "batch_size": 64, **training},
            "device": DEVICE,
        }
    )


@pytest.fixture(autouse=True)
def exact_cuda_arithmetic() -> Iterator[None]:
    """Full float32 convolutions and deterministic cuDNN kernels while a test runs on a GPU."""
    if DEVICE != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = (
        False,
        True,
        False,
    )
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def stacked_training(spec: ExperimentSpec, **options: Any) -> list[ArmOutcome]:
    """train_stacked on the test device, with or without CUDA graphs as the environment says."""
    return train_stacked(spec, cuda_graphs=CUDA_GRAPHS, **options)


def all_members(spec: ExperimentSpec) -> list[tuple[int, int]]:
    return [(arm.activation_index, arm.seed) for arm in spec.arms()]


def unstacked(spec: ExperimentSpec, members: list[tuple[int, int]], data: DatasetSplits) -> list[ArmOutcome]:
    return [train_arm(spec, activation_index=index, seed=seed, data=data) for index, seed in members]


def close(stacked: float | None, plain: float | None, *, what: str) -> None:
    assert (stacked is None) == (plain is None), f"{what}: {stacked} vs {plain}"
    if stacked is not None and plain is not None:
        assert math.isclose(stacked, plain, rel_tol=RTOL, abs_tol=ATOL), f"{what}: {stacked} vs {plain}"


def assert_reports_match(stacked: EpochReport, plain: EpochReport, *, examples: int, what: str) -> None:
    assert stacked.epoch == plain.epoch
    assert stacked.diverged == plain.diverged, what
    assert stacked.gradient_flag == plain.gradient_flag, what
    for name in FLOAT_FIELDS:
        close(getattr(stacked, name), getattr(plain, name), what=f"{what} {name}")
    # One example of slack: an argmax on a rounding boundary may flip.
    assert abs(stacked.train_accuracy - plain.train_accuracy) <= 1.5 / examples, what
    assert stacked.layers and len(stacked.layers) == len(plain.layers), what
    for stacked_layer, plain_layer in zip(stacked.layers, plain.layers, strict=True):
        where = f"{what} {plain_layer.layer_name}"
        assert (stacked_layer.layer, stacked_layer.layer_name) == (plain_layer.layer, plain_layer.layer_name)
        for name in LAYER_FLOAT_FIELDS:
            close(getattr(stacked_layer, name), getattr(plain_layer, name), what=f"{where} {name}")
        for name in LAYER_COUNT_FIELDS:
            stacked_value, plain_value = getattr(stacked_layer, name), getattr(plain_layer, name)
            assert (stacked_value is None) == (plain_value is None), f"{where} {name}"
            if stacked_value is not None:
                # One unit of slack out of at least four.
                assert abs(stacked_value - plain_value) <= 0.25 + 1e-9, f"{where} {name}"
        stacked_parameters = stacked_layer.activation_parameters
        plain_parameters = plain_layer.activation_parameters
        assert (stacked_parameters is None) == (plain_parameters is None), where
        if stacked_parameters is not None and plain_parameters is not None:
            assert stacked_parameters.keys() == plain_parameters.keys(), where
            for key, value in plain_parameters.items():
                assert isinstance(value, float)
                close(float(stacked_parameters[key]), value, what=f"{where} {key}")  # type: ignore[arg-type]


def assert_outcomes_match(stacked: list[ArmOutcome], plain: list[ArmOutcome], *, examples: int) -> None:
    assert len(stacked) == len(plain)
    for position, (stacked_outcome, plain_outcome) in enumerate(zip(stacked, plain, strict=True)):
        what = f"member {position}"
        assert stacked_outcome.status == plain_outcome.status, what
        assert stacked_outcome.epochs_completed == plain_outcome.epochs_completed, what
        assert stacked_outcome.diverged_epoch == plain_outcome.diverged_epoch, what
        assert stacked_outcome.info is not None and plain_outcome.info is not None
        assert stacked_outcome.info.training_path == "stacked"
        assert plain_outcome.info.training_path == "unstacked"
        assert dataclasses.replace(stacked_outcome.info, training_path="unstacked") == plain_outcome.info
        assert len(stacked_outcome.reports) == len(plain_outcome.reports), what
        # Epoch 0, the network at initialisation, is compared like every trained epoch.
        assert plain_outcome.reports and plain_outcome.reports[0].epoch == 0, what
        for stacked_report, plain_report in zip(stacked_outcome.reports, plain_outcome.reports, strict=True):
            assert_reports_match(
                stacked_report, plain_report, examples=examples, what=f"{what} epoch {plain_report.epoch}"
            )


def check_equivalence(spec: ExperimentSpec, members: list[tuple[int, int]] | None = None) -> list[ArmOutcome]:
    data = load_dataset(spec.dataset, validation_fraction=spec.training.validation_fraction)
    chosen = members or all_members(spec)
    stacked = stacked_training(spec, members=chosen, data=data)
    assert_outcomes_match(stacked, unstacked(spec, chosen, data), examples=data.train_x.shape[0])
    return stacked


def test_mlp_grid_with_learnable_activations_and_clipping_matches_unstacked_training() -> None:
    spec = make_spec(
        model={"kind": "mlp", "hidden": [12, 12]}, activations=LEARNABLE_ACTIVATIONS, seeds=[0, 1], grad_clip=0.5
    )
    # Members in a scrambled order: outcomes come back in the caller's order.
    members = list(reversed(all_members(spec)))
    outcomes = check_equivalence(spec, members)
    assert all(outcome.status == "succeeded" and outcome.epochs_completed == 3 for outcome in outcomes)
    # The diagnostics are really there: dead units for relu, saturation for sigmoid, learned parameters.
    relu = outcomes[members.index((0, 0))].reports[-1].layers[0]
    sigmoid = outcomes[members.index((6, 1))].reports[-1].layers[0]
    pau = outcomes[members.index((4, 0))].reports[-1].layers[1]
    assert relu.dead_fraction is not None and sigmoid.saturated_fraction is not None
    assert pau.activation_parameters is not None and "b4" in pau.activation_parameters


def test_mlp_with_layer_norm_residual_sgd_schedule_and_validation_matches_unstacked_training() -> None:
    spec = make_spec(
        model={"kind": "mlp", "hidden": [10, 10], "norm": "layer", "residual": True},
        activations=["elu", {"name": "prelu"}],
        seeds=[3, 4],
        optimizer="sgd",
        lr=0.05,
        schedule="step",
        step_size=1,
        gamma=0.5,
        validation_fraction=0.2,
    )
    outcomes = check_equivalence(spec)
    # Epoch 0 reports the rate the first epoch starts with.
    assert [report.lr for report in outcomes[0].reports] == pytest.approx([0.05, 0.05, 0.025, 0.0125])
    assert all(report.val_loss is not None for report in outcomes[0].reports)


def test_mlp_with_batch_norm_matches_unstacked_training() -> None:
    spec = make_spec(
        model={"kind": "mlp", "hidden": [10], "norm": "batch"},
        activations=["relu", "swish_beta"],
        seeds=[0, 1],
        optimizer="sgd",
        lr=0.1,
    )
    check_equivalence(spec)


def test_conv2d_network_with_group_norm_and_hidden_layer_matches_unstacked_training() -> None:
    spec = make_spec(
        model={"kind": "cnn", "channels": [3, 4], "norm": "layer", "hidden": [8]},
        activations=["relu", {"name": "prelu", "params": {"mode": "unit"}}, "tanh", "pau"],
        seeds=[0, 1],
        dataset={"name": "digits"},
        epochs=2,
        batch_size=128,
        optimizer="adamw",
        weight_decay=0.01,
        grad_clip=1.0,
    )
    check_equivalence(spec, [(0, 0), (1, 0), (2, 1), (3, 1)])


def test_conv1d_network_with_batch_norm_matches_unstacked_training() -> None:
    spec = make_spec(
        model={"kind": "cnn", "channels": [4], "kernel_size": 5, "norm": "batch", "pooling": "avg"},
        activations=["relu", "swish_beta"],
        seeds=[0, 2],
        dataset={"name": "mnist1d"},
        epochs=2,
        batch_size=256,
        optimizer="sgd",
        lr=0.05,
    )
    check_equivalence(spec, [(0, 0), (1, 2)])


def test_stacked_training_is_deterministic() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu", "swish_beta"], seeds=[0, 1], epochs=2)
    data = load_dataset(spec.dataset)

    def numbers(outcomes: list[ArmOutcome]) -> list[list[dict[str, Any]]]:
        rows = []
        for outcome in outcomes:
            rows.append(
                [
                    {key: value for key, value in dataclasses.asdict(report).items() if "second" not in key}
                    for report in outcome.reports
                ]
            )
        return rows

    assert numbers(stacked_training(spec, data=data)) == numbers(stacked_training(spec, data=data))


def test_a_diverging_member_leaves_the_stack_without_disturbing_the_others() -> None:
    # exp(100 x) overflows float32 at once: that member's loss is not finite in the first epoch.
    spec = make_spec(
        model={"kind": "mlp", "hidden": [8, 8]},
        activations=["relu", {"name": "custom", "expression": "exp(100 * x)", "label": "explodes"}, "swish_beta"],
        seeds=[0, 1],
    )
    outcomes = check_equivalence(spec)
    statuses = [outcome.status for outcome in outcomes]
    assert statuses == ["succeeded", "succeeded", "diverged", "diverged", "succeeded", "succeeded"]
    diverged = outcomes[2]
    assert diverged.diverged_epoch == 1 and diverged.epochs_completed == 1
    # Epoch 0 (before training) has no finite loss either, but only a trained epoch diverges.
    assert [report.epoch for report in diverged.reports] == [0, 1]
    assert not diverged.reports[0].diverged and diverged.reports[0].train_loss is None
    assert diverged.reports[1].diverged and diverged.reports[1].train_loss is None
    # The others trained every epoch with finite numbers.
    for outcome in (outcomes[0], outcomes[5]):
        assert all(report.train_loss is not None and math.isfinite(report.train_loss) for report in outcome.reports)


def test_on_epoch_can_cancel_one_member_and_the_others_go_on_unchanged() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu", "pau", "tanh"], seeds=[0])
    data = load_dataset(spec.dataset)
    members = all_members(spec)
    seen: list[list[int]] = []
    started: list[tuple[int, RunInfo]] = []

    def on_epoch(reports: list[tuple[int, EpochReport]]) -> list[bool]:
        seen.append([member for member, _ in reports])
        return [not (member == 1 and report.epoch == 1) for member, report in reports]

    outcomes = stacked_training(
        spec,
        members=members,
        data=data,
        on_start=lambda member, info: started.append((member, info)),
        on_epoch=on_epoch,
    )
    # Epoch 0, epoch 1 (member 1 is cancelled after it), epochs 2 and 3.
    assert seen == [[0, 1, 2], [0, 1, 2], [0, 2], [0, 2]]
    assert [member for member, _ in started] == [0, 1, 2]
    assert all(info.training_path == "stacked" for _, info in started)
    assert [outcome.status for outcome in outcomes] == ["succeeded", "cancelled", "succeeded"]
    assert outcomes[1].epochs_completed == 1
    plain = unstacked(spec, [members[0], members[2]], data)
    assert_outcomes_match([outcomes[0], outcomes[2]], plain, examples=data.train_x.shape[0])


def test_on_epoch_returning_false_cancels_every_member() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu", "tanh"], seeds=[0])
    # The first answer comes after epoch 0, the network at initialisation: cancelled before any training.
    outcomes = stacked_training(spec, on_epoch=lambda reports: False)
    assert [(outcome.status, outcome.epochs_completed) for outcome in outcomes] == [("cancelled", 0)] * 2
    assert all([report.epoch for report in outcome.reports] == [0] for outcome in outcomes)


@pytest.mark.parametrize(
    ("model", "dataset", "reason"),
    [
        ({"kind": "mlp", "hidden": [8], "dropout": 0.2}, "spirals", "dropout"),
        ({"kind": "cnn", "channels": [3], "dropout": 0.1}, "digits", "dropout"),
        ({"kind": "rnn", "cell": "rnn", "hidden_size": 4}, "digits", "rnn"),
        ({"kind": "rnn", "cell": "gru", "hidden_size": 4, "head_hidden": 4}, "digits", "rnn"),
    ],
)
def test_models_without_a_stacked_form_say_why(model: dict[str, Any], dataset: str, reason: str) -> None:
    spec = make_spec(model=model, activations=["relu"], seeds=[0], dataset={"name": dataset})
    stackable, why = can_stack(spec)
    assert not stackable
    assert reason in why


def test_unstackable_models_fall_back_to_unstacked_training_with_the_same_results() -> None:
    spec = make_spec(
        model={"kind": "mlp", "hidden": [8], "dropout": 0.2}, activations=["relu", "tanh"], seeds=[0], epochs=2
    )
    data = load_dataset(spec.dataset)
    seen: list[list[int]] = []

    def on_epoch(reports: list[tuple[int, EpochReport]]) -> None:
        seen.append([member for member, _ in reports])

    outcomes = stacked_training(spec, data=data, on_epoch=on_epoch)
    plain = unstacked(spec, all_members(spec), data)
    assert seen == [[0], [0], [0], [1], [1], [1]]
    for outcome, expected in zip(outcomes, plain, strict=True):
        assert outcome.info is not None and outcome.info.training_path == "unstacked"
        assert [report.train_loss for report in outcome.reports] == [report.train_loss for report in expected.reports]


def test_copying_a_member_out_of_the_stack_gives_back_its_model() -> None:
    spec = make_spec(
        model={"kind": "cnn", "channels": [3, 4], "norm": "batch", "hidden": [5]},
        activations=["relu", {"name": "prelu", "params": {"mode": "unit"}}],
        seeds=[0],
        dataset={"name": "digits"},
    )
    models: list[ActivationNetwork] = []
    for index in (0, 1, 1):
        torch.manual_seed(len(models))
        models.append(build_model(spec, spec.activations[index], input_shape=(1, 8, 8), classes=10))
        with torch.no_grad():
            for buffer in models[-1].buffers():
                if buffer.is_floating_point():
                    buffer.uniform_()
    stacked = build_stacked_model(models, [0, 1, 1])
    fresh = build_model(spec, spec.activations[1], input_shape=(1, 8, 8), classes=10)
    copy_member_into(stacked, 2, fresh)
    expected = models[2].state_dict()
    for name, value in fresh.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, expected[name]), name
    # The stacked forward gives each member its own model's logits.
    inputs = torch.randn(6, 1, 8, 8)
    for model in models:
        model.eval()
    stacked.eval()
    logits = stacked(inputs, shared=True)
    for member, model in enumerate(models):
        torch.testing.assert_close(logits[member], model(inputs), rtol=1e-5, atol=1e-6)


def test_group_members_splits_into_even_activation_major_chunks_within_the_budget() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [32, 32]}, activations=["relu", "tanh", "elu"], seeds=[0, 1, 2])
    members = list(reversed(all_members(spec)))
    per_member = member_memory_bytes(spec)
    assert per_member > 0
    activation_major = sorted(members, key=lambda member: member[0])
    assert group_members(spec, members, 100 * per_member) == [activation_major]
    chunks = group_members(spec, members, 4 * per_member)
    assert [len(chunk) for chunk in chunks] == [3, 3, 3]
    assert [member for chunk in chunks for member in chunk] == activation_major
    assert [len(chunk) for chunk in group_members(spec, members, 1)] == [1] * 9
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        group_members(spec, members, 0)


def test_bad_members_are_rejected_with_the_field_named() -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu"], seeds=[0])
    with pytest.raises(ValueError, match=r"members\[1\]: activation_index must be in 0\.\.0"):
        stacked_training(spec, members=[(0, 0), (3, 0)])
    with pytest.raises(ValueError, match="only once"):
        stacked_training(spec, members=[(0, 0), (0, 0)])


def without_timing(outcome: ArmOutcome) -> list[dict[str, Any]]:
    return [
        {
            key: value
            for key, value in dataclasses.asdict(report).items()
            if key not in ("epoch_seconds", "samples_per_second")
        }
        for report in outcome.reports
    ]


CHECKPOINT_SPEC: dict[str, Any] = {
    "model": {"kind": "mlp", "hidden": [8, 8], "norm": "batch"},
    "activations": ["relu", {"name": "prelu", "params": {"mode": "unit"}}],
    "seeds": [0, 1],
    "schedule": "step",
    "step_size": 1,
    "gamma": 0.5,
    "optimizer": "adamw",
    "weight_decay": 0.01,
}


def test_a_stopped_stacked_run_resumes_from_its_checkpoints_as_if_never_stopped(tmp_path: Path) -> None:
    spec = make_spec(**CHECKPOINT_SPEC)
    data = load_dataset(spec.dataset)
    members = all_members(spec)
    paths: list[Path | None] = [tmp_path / f"member{position}.pt" for position in range(len(members))]
    uninterrupted = stacked_training(spec, members=members, data=data)
    stopped = stacked_training(
        spec, members=members, data=data, checkpoint_paths=paths, on_epoch=lambda reports: reports[0][1].epoch < 1
    )
    assert all(outcome.status == "cancelled" and outcome.epochs_completed == 1 for outcome in stopped)
    seen: list[int] = []
    resumed = stacked_training(
        spec,
        members=members,
        data=data,
        checkpoint_paths=paths,
        on_epoch=lambda reports: seen.append(reports[0][1].epoch),
    )
    assert seen == [2, 3]
    for before, after in zip(uninterrupted, resumed, strict=True):
        assert after.status == "succeeded" and after.epochs_completed == 3
        assert without_timing(after) == without_timing(before)
    # Finished members come back from their checkpoints without training again.
    again = stacked_training(
        spec, members=members, data=data, checkpoint_paths=paths, on_epoch=lambda reports: seen.append(0)
    )
    assert seen == [2, 3]
    assert [without_timing(outcome) for outcome in again] == [without_timing(outcome) for outcome in resumed]


def test_stacked_checkpoints_follow_the_interval_and_a_crash_resumes_from_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(**{**CHECKPOINT_SPEC, "epochs": 5})
    data = load_dataset(spec.dataset)
    members = all_members(spec)
    uninterrupted = stacked_training(spec, members=members, data=data)
    now = [0.0]
    monkeypatch.setattr(trainer.CheckpointClock, "now", staticmethod(lambda: now[0]))
    saved: list[int] = []
    real_save = stacked_trainer.save_checkpoint

    def recording_save(path: Path, state: Any, *, status: str, **options: Any) -> None:
        saved.append(state.epochs_completed)
        real_save(path, state, status=status, **options)

    monkeypatch.setattr(stacked_trainer, "save_checkpoint", recording_save)

    def crash_in_epoch_four(reports: list[tuple[int, EpochReport]]) -> None:
        # Epoch 0 (the network at initialisation) trains nothing: no time to speak of.
        now[0] += 6.0 if reports[0][1].epoch > 0 else 0.0
        if reports[0][1].epoch == 4:
            raise RuntimeError("the process dies")

    paths: list[Path | None] = [tmp_path / f"member{position}.pt" for position in range(len(members))]
    with pytest.raises(RuntimeError, match="dies"):
        stacked_training(
            spec,
            members=members,
            data=data,
            checkpoint_paths=paths,
            checkpoint_interval=10.0,
            on_epoch=crash_in_epoch_four,
        )
    # 6 s epochs, 10 s interval: every member saved after epoch 2 only.
    assert saved == [2] * len(members)
    retrained: list[int] = []

    def six_second_epochs(reports: list[tuple[int, EpochReport]]) -> None:
        now[0] += 6.0
        retrained.append(reports[0][1].epoch)

    resumed = stacked_training(
        spec,
        members=members,
        data=data,
        checkpoint_paths=paths,
        checkpoint_interval=10.0,
        on_epoch=six_second_epochs,
    )
    assert retrained == [3, 4, 5]
    assert [without_timing(outcome) for outcome in resumed] == [without_timing(outcome) for outcome in uninterrupted]
    # Saved again when due (epoch 4, 12 s after the start); the end (epoch 5) is not due and is the caller's to record.
    assert saved[len(members) :] == [4] * len(members)


def test_stacked_and_unstacked_checkpoints_resume_each_other(tmp_path: Path) -> None:
    spec = make_spec(**{**CHECKPOINT_SPEC, "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0})
    data = load_dataset(spec.dataset)
    members = all_members(spec)
    plain = unstacked(spec, members, data)
    paths: list[Path | None] = [tmp_path / f"member{position}.pt" for position in range(len(members))]
    # Stacked for one epoch, then every member finishes unstacked.
    stacked_training(
        spec, members=members, data=data, checkpoint_paths=paths, on_epoch=lambda reports: reports[0][1].epoch < 1
    )
    finished_unstacked = [
        train_arm(spec, activation_index=index, seed=seed, data=data, checkpoint_path=path)
        for (index, seed), path in zip(members, paths, strict=True)
    ]
    assert [len(outcome.reports) for outcome in finished_unstacked] == [4] * 4  # epochs 0 to 3
    for resumed, expected in zip(finished_unstacked, plain, strict=True):
        for resumed_report, expected_report in zip(resumed.reports, expected.reports, strict=True):
            assert_reports_match(resumed_report, expected_report, examples=data.train_x.shape[0], what="unstacked")
    # Unstacked for one epoch (member 0 only, the others fresh), then all finish stacked together.
    other = [tmp_path / f"other{position}.pt" for position in range(len(members))]
    train_arm(
        spec,
        activation_index=members[0][0],
        seed=members[0][1],
        data=data,
        checkpoint_path=other[0],
        on_epoch=lambda report: report.epoch < 1,
    )
    finished_stacked = stacked_training(spec, members=members, data=data, checkpoint_paths=list(other))
    assert_outcomes_match(finished_stacked[1:], plain[1:], examples=data.train_x.shape[0])
    for resumed_report, expected_report in zip(finished_stacked[0].reports, plain[0].reports, strict=True):
        assert_reports_match(resumed_report, expected_report, examples=data.train_x.shape[0], what="stacked")


def test_stacking_is_recommended_on_gpus_and_for_small_mlps_on_cpus() -> None:
    mlp = make_spec(model={"kind": "mlp", "hidden": [8]}, activations=["relu"], seeds=[0])
    cnn = make_spec(model={"kind": "cnn", "channels": [3]}, activations=["relu"], seeds=[0], dataset={"name": "digits"})
    dropout = make_spec(model={"kind": "mlp", "hidden": [8], "dropout": 0.5}, activations=["relu"], seeds=[0])
    large_mlp = make_spec(
        model={"kind": "mlp", "hidden": [512, 512]}, activations=["relu"], seeds=[0], dataset={"name": "mnist_5k"}
    )
    assert stacking_recommended(mlp, device="cpu")[0]
    assert not stacking_recommended(large_mlp, device="cpu")[0]
    assert stacking_recommended(large_mlp, device="cuda")[0]
    assert stacking_recommended(cnn, device="cuda")[0]
    recommended, reason = stacking_recommended(cnn, device="cpu")
    assert not recommended and "CPU" in reason
    recommended, reason = stacking_recommended(dropout, device="cuda")
    assert not recommended and "dropout" in reason
