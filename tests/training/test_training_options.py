"""Version-2 training options in the engine: optimiser internals (betas, eps, alpha, dampening) and train_metrics.

Each optimiser setting reaches torch's optimizer, changes the numbers when it differs from torch's default, leaves
them bit-identical when it is given at that default (so a version-1 spec trains as before), and trains the same
numbers stacked as unstacked (the equivalence check of tests/training/test_stacked.py). ``train_metrics``
"after_epoch" changes the train loss and accuracy, to those of the whole training split after the epoch, and
nothing else: not the training (batch order, dropout masks), not the other columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from app.spec import ExperimentSpec
from tests.training.test_stacked import DEVICE, check_equivalence
from tests.training.test_trainer import comparable
from worker.training.datasets import load_dataset
from worker.training.epochs import run_epoch
from worker.training.trainer import ArmEpoch, build_optimizer, evaluate, prepare_arm, train_arm

# Each optimizer with every setting that applies to it at a value other than torch's default.
CHANGED: list[tuple[str, dict[str, Any]]] = [
    ("adam", {"betas": [0.5, 0.9]}),
    ("adam", {"eps": 1e-3}),
    ("adamw", {"betas": [0.8, 0.99], "eps": 1e-4}),
    ("rmsprop", {"alpha": 0.9}),
    ("rmsprop", {"eps": 1e-3}),
    ("sgd", {"dampening": 0.5}),
]
# Each setting at torch's default, as a version-2 spec may spell it out.
AT_DEFAULT: list[tuple[str, dict[str, Any]]] = [
    ("adam", {"betas": [0.9, 0.999], "eps": 1e-8}),
    ("adamw", {"betas": [0.9, 0.999], "eps": 1e-8}),
    ("rmsprop", {"alpha": 0.99, "eps": 1e-8}),
    ("sgd", {"dampening": 0.0}),
]
LEARNING_RATES = {"adam": 0.01, "adamw": 0.01, "rmsprop": 0.005, "sgd": 0.1}


def make_spec(optimizer: str, settings: dict[str, Any], *, version: int = 2, **model: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "version": version,
            "dataset": {"name": "spirals", "params": {"samples": 500}},
            "model": {"kind": "mlp", "hidden": [12, 12], **model},
            "activations": ["relu", "swish_beta"],
            "seeds": [0, 1],
            "training": {
                "epochs": 3,
                "batch_size": 64,
                "optimizer": optimizer,
                "lr": LEARNING_RATES[optimizer],
                "momentum": 0.9,
                **settings,
            },
            "device": DEVICE,
        }
    )


def _reports(spec: ExperimentSpec) -> list[dict[str, Any]]:
    return comparable(train_arm(spec, activation_index=1, seed=0).reports)


@pytest.mark.parametrize(("optimizer", "settings"), CHANGED)
def test_each_setting_reaches_torchs_optimizer(optimizer: str, settings: dict[str, Any]) -> None:
    group = build_optimizer([nn.Parameter(torch.zeros(3))], make_spec(optimizer, settings).training).param_groups[0]
    for name, value in settings.items():
        assert group[name] == (tuple(value) if name == "betas" else value), name


# torch's optimizers with nothing but the spec's v1 settings (lr, momentum, no weight decay).
TORCH_DEFAULTS: dict[str, Callable[[list[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda parameters, lr: torch.optim.Adam(parameters, lr=lr, weight_decay=0.0),
    "adamw": lambda parameters, lr: torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0),
    "rmsprop": lambda parameters, lr: torch.optim.RMSprop(parameters, lr=lr, momentum=0.9, weight_decay=0.0),
    "sgd": lambda parameters, lr: torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=0.0),
}


@pytest.mark.parametrize("optimizer", sorted(TORCH_DEFAULTS))
def test_a_spec_without_settings_builds_torchs_defaults(optimizer: str) -> None:
    parameters = [nn.Parameter(torch.zeros(3))]
    built = build_optimizer(parameters, make_spec(optimizer, {}, version=1).training).param_groups[0]
    reference = TORCH_DEFAULTS[optimizer](parameters, LEARNING_RATES[optimizer]).param_groups[0]
    assert {key: value for key, value in built.items() if key != "params"} == {
        key: value for key, value in reference.items() if key != "params"
    }


@pytest.mark.parametrize(("optimizer", "settings"), AT_DEFAULT)
def test_settings_given_at_torchs_defaults_train_exactly_as_a_version_1_spec(
    optimizer: str, settings: dict[str, Any]
) -> None:
    assert _reports(make_spec(optimizer, settings)) == _reports(make_spec(optimizer, {}, version=1))


@pytest.mark.parametrize(("optimizer", "settings"), CHANGED)
def test_a_changed_setting_changes_the_training(optimizer: str, settings: dict[str, Any]) -> None:
    changed, default = _reports(make_spec(optimizer, settings)), _reports(make_spec(optimizer, {}))
    assert [row["train_loss"] for row in changed] != [row["train_loss"] for row in default]
    # Only the optimizer's steps differ: the epochs, learning rates and layer names are those of the default.
    assert [(row["epoch"], row["lr"]) for row in changed] == [(row["epoch"], row["lr"]) for row in default]
    assert [[layer["layer_name"] for layer in row["layers"]] for row in changed] == [
        [layer["layer_name"] for layer in row["layers"]] for row in default
    ]


@pytest.mark.parametrize(("optimizer", "settings"), CHANGED)
def test_stacked_training_with_changed_settings_matches_unstacked_training(
    optimizer: str, settings: dict[str, Any]
) -> None:
    outcomes = check_equivalence(make_spec(optimizer, settings))
    assert all(outcome.status == "succeeded" and outcome.epochs_completed == 3 for outcome in outcomes)


def test_stacked_batch_norm_with_sgd_dampening_matches_unstacked_training() -> None:
    # BatchNorm is compared with SGD only (tests/training/test_stacked.py says why).
    check_equivalence(make_spec("sgd", {"dampening": 0.3}, norm="batch"))


def _without_train_metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in row.items() if key not in ("train_loss", "train_accuracy", "train_metrics")}
        for row in rows
    ]


def test_after_epoch_train_metrics_change_the_train_columns_and_nothing_else() -> None:
    # Dropout and batch norm: a measurement that drew from the random stream or moved the running statistics
    # would change the next epochs' training, and with it every other column.
    model = {"dropout": 0.3, "norm": "batch"}
    after = _reports(make_spec("adam", {"train_metrics": "after_epoch"}, **model))
    running = _reports(make_spec("adam", {}, version=1, **model))
    assert _without_train_metrics(after) == _without_train_metrics(running)
    # Epoch 0 (the network at initialisation, no batches to average) is the whole split in eval mode either way.
    assert [row["train_metrics"] for row in after] == ["after_epoch"] * 4
    assert [row["train_metrics"] for row in running] == ["after_epoch"] + ["running"] * 3
    assert after[0] == running[0]
    assert all(a["train_loss"] != r["train_loss"] for a, r in zip(after[1:], running[1:], strict=True))
    assert _reports(make_spec("adam", {"train_metrics": "running"}, **model)) == running


def test_after_epoch_train_metrics_are_the_whole_training_split_after_the_epochs_steps() -> None:
    spec = make_spec("adam", {"train_metrics": "after_epoch"}, dropout=0.3)
    data = load_dataset(spec.dataset, validation_fraction=0.0)
    state = prepare_arm(spec, activation_index=0, seed=0, data=data, device=torch.device("cpu"))
    (report,) = run_epoch(ArmEpoch(state, data), data, epoch=1, training=spec.training)
    loss, accuracy = evaluate(state.model, data.train_x, data.train_y).tolist()
    assert (report.train_loss, report.train_accuracy) == (loss, accuracy)
    assert state.model.training  # back in training mode for the next epoch


@pytest.mark.parametrize(
    ("optimizer", "model"), [("adamw", {}), ("sgd", {"norm": "batch"})], ids=["mlp-adamw", "batch-norm-sgd"]
)
def test_stacked_after_epoch_train_metrics_match_unstacked_training(optimizer: str, model: dict[str, Any]) -> None:
    outcomes = check_equivalence(make_spec(optimizer, {"train_metrics": "after_epoch"}, **model))
    assert all(report.train_metrics == "after_epoch" for outcome in outcomes for report in outcome.reports)
