"""Robustness evaluation: noise std 0 and FGSM epsilon 0 are the clean accuracy, PGD weakens with epsilon."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from app.spec import ExperimentSpec
from worker.training.datasets import DatasetSplits
from worker.training.robustness import evaluate_robustness, fgsm, pgd
from worker.training.trainer import evaluate, prepare_arm, train_epoch, training_data


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, DatasetSplits]:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"name": "spirals"},
            "model": {"kind": "mlp", "hidden": [32, 32], "norm": "batch", "dropout": 0.1},
            "activations": ["relu"],
            "seeds": [0],
            "training": {"epochs": 12, "batch_size": 64, "lr": 0.01},
            "device": "cpu",
        }
    )
    device, data = training_data(spec, device="cpu", data=None)
    state = prepare_arm(spec, activation_index=0, seed=0, data=data, device=device)
    for epoch in range(1, 13):
        train_epoch(state, data.train_x, data.train_y, epoch=epoch)
    return state.model, data


def test_zero_strengths_give_the_clean_accuracy_and_loss(trained: tuple[nn.Module, DatasetSplits]) -> None:
    model, data = trained
    model.train()
    clean_loss, clean_accuracy = (float(value) for value in evaluate(model, data.test_x, data.test_y))
    assert clean_accuracy > 0.75, "the net must have learned for the attacks to mean something"
    points = evaluate_robustness(
        model, data.test_x, data.test_y, seed=0, noise_std=[0.0], fgsm_epsilon=[0.0], pgd_epsilon=[0.0]
    )
    assert [(point.kind, point.strength) for point in points] == [("noise", 0.0), ("fgsm", 0.0), ("pgd", 0.0)]
    for point in points:
        assert point.accuracy == pytest.approx(clean_accuracy, abs=1e-12)
        assert point.loss == pytest.approx(clean_loss, rel=1e-9)
    assert model.training, "the caller's mode comes back"


def test_attacks_lower_accuracy_and_pgd_is_non_increasing_in_epsilon(trained: tuple[nn.Module, DatasetSplits]) -> None:
    model, data = trained
    epsilons = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3]
    points = evaluate_robustness(model, data.test_x, data.test_y, seed=0, fgsm_epsilon=[0.2], pgd_epsilon=epsilons)
    fgsm_point, *pgd_points = points
    accuracies = [point.accuracy for point in pgd_points]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < accuracies[0] - 0.2, "a large epsilon must break a small net"
    assert fgsm_point.accuracy < accuracies[0]
    # PGD at the same epsilon is at least as strong as FGSM's single step.
    assert pgd_points[4].strength == fgsm_point.strength
    assert pgd_points[4].accuracy <= fgsm_point.accuracy


def test_perturbations_stay_in_the_epsilon_ball_and_leave_parameter_gradients_alone(
    trained: tuple[nn.Module, DatasetSplits],
) -> None:
    model, data = trained
    model.eval()
    inputs, labels = data.test_x[:100], data.test_y[:100]
    for parameter in model.parameters():
        parameter.grad = None
    for adversarial in (fgsm(model, inputs, labels, epsilon=0.3), pgd(model, inputs, labels, epsilon=0.3, steps=7)):
        assert (adversarial - inputs).abs().max().item() <= 0.3 + 1e-6
        assert (adversarial - inputs).abs().max().item() > 0.29
    assert all(parameter.grad is None for parameter in model.parameters())


def test_noise_is_fixed_by_the_seed_and_independent_of_the_batch_size(trained: tuple[nn.Module, DatasetSplits]) -> None:
    model, data = trained
    args = (model, data.test_x, data.test_y)
    first = evaluate_robustness(*args, seed=3, noise_std=[0.5, 1.0])
    again = evaluate_robustness(*args, seed=3, noise_std=[0.5, 1.0], batch_size=37)
    other = evaluate_robustness(*args, seed=4, noise_std=[0.5, 1.0])
    assert [point.accuracy for point in first] == [point.accuracy for point in again]
    assert [point.accuracy for point in first] != [point.accuracy for point in other]
    assert first[1].accuracy < first[0].accuracy


def test_results_do_not_depend_on_the_evaluation_batch_size_for_attacks(
    trained: tuple[nn.Module, DatasetSplits],
) -> None:
    model, data = trained
    args = (model, data.test_x, data.test_y)
    whole = evaluate_robustness(*args, seed=0, fgsm_epsilon=[0.1], pgd_epsilon=[0.1])
    batched = evaluate_robustness(*args, seed=0, fgsm_epsilon=[0.1], pgd_epsilon=[0.1], batch_size=50)
    for a, b in zip(whole, batched, strict=True):
        assert a.accuracy == pytest.approx(b.accuracy, abs=2 / data.test_x.shape[0])


def test_a_stacked_member_resumed_after_its_end_measures_the_numbers_of_the_ordinary_trainer(tmp_path: Path) -> None:
    from worker.training.stacked import train_stacked
    from worker.training.trainer import train_arm

    spec = ExperimentSpec.model_validate(
        {
            "version": 2,
            "dataset": {"name": "spirals", "params": {"samples": 400}},
            "model": {"kind": "mlp", "hidden": [16]},
            "activations": ["relu", "tanh"],
            "seeds": [0],
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.03},
            "device": "cpu",
            "evaluation": {"noise_std": [0.3], "fgsm_epsilon": [0.1], "pgd_epsilon": [0.1], "pgd_steps": 3},
        }
    )
    paths = [tmp_path / "relu.pt", tmp_path / "tanh.pt"]
    trained = train_stacked(spec, device="cpu", checkpoint_paths=paths, cuda_graphs=False)
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in trained)
    # Resumed from the checkpoints of their end (as after a crash before the end was recorded): no epoch again.
    resumed = train_stacked(spec, device="cpu", checkpoint_paths=paths, cuda_graphs=False)
    for index, (first, again) in enumerate(zip(trained, resumed, strict=True)):
        ordinary = train_arm(spec, activation_index=index, seed=0, device="cpu")
        assert [(point.kind, point.strength) for point in first.robustness] == [
            ("noise", 0.3),
            ("fgsm", 0.1),
            ("pgd", 0.1),
        ]
        assert again.robustness == first.robustness
        assert [point.accuracy for point in first.robustness] == pytest.approx(
            [point.accuracy for point in ordinary.robustness], abs=1e-9
        )
        assert [point.loss for point in first.robustness] == pytest.approx(
            [point.loss for point in ordinary.robustness], rel=1e-4
        )
