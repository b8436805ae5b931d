"""A step budget (training.steps, eval_every) on both trainers: the rows it gives, the batches it trains, resume.

spirals with 300 samples trains on 240 examples: four batches of 64 a data epoch (the last one 48).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.spec import ExperimentSpec
from app.spec_steps import data_epochs, evaluation_steps
from tests.training.test_initial_epoch import numbers
from tests.training.test_stacked import check_equivalence
from worker.training.reports import EpochReport
from worker.training.stacked import train_stacked
from worker.training.trainer import train_arm

PER_EPOCH = 4


def make_spec(dropout: float = 0.0, **training: Any) -> ExperimentSpec:
    # Dropout draws from the global random stream (and does not stack): the resume test uses it.
    return ExperimentSpec.model_validate(
        {
            "version": 2,
            "dataset": {"name": "spirals", "params": {"samples": 300}},
            "model": {"kind": "mlp", "hidden": [8], "dropout": dropout},
            "activations": ["relu", "tanh"],
            "seeds": [0, 1],
            "training": {"batch_size": 64, "lr": 0.05, **training},
            "device": "cpu",
        }
    )


def test_evaluation_k_trains_its_own_steps_across_data_epochs() -> None:
    training = make_spec(steps=10, eval_every=3).training
    assert training.evaluations == 4
    spans = [evaluation_steps(training, k, size=240) for k in range(5)]
    assert spans == [range(0), range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    # Steps 3..5 take data epoch 1's last batch and data epoch 2's first two.
    assert data_epochs(spans[2], size=240, batch_size=64) == [(1, slice(3, 4)), (2, slice(0, 2))]
    # The default is one pass over the training data (four batches), capped at steps.
    assert make_spec(steps=10).training.evaluation_interval == PER_EPOCH
    assert make_spec(steps=3).training.evaluation_interval == 3


def test_rows_count_evaluations_and_the_step_column_the_steps_taken() -> None:
    spec = make_spec(steps=10, eval_every=4)
    outcome = train_arm(spec, activation_index=0, seed=0)
    assert outcome.status == "succeeded" and outcome.epochs_completed == 3
    assert [(report.epoch, report.step) for report in outcome.reports] == [(0, 0), (1, 4), (2, 8), (3, 10)]
    stacked = train_stacked(spec, cuda_graphs=False)
    assert all(each.info is not None and each.info.training_path == "stacked" for each in stacked)
    assert [[report.step for report in each.reports] for each in stacked] == [[0, 4, 8, 10]] * 4


@pytest.mark.parametrize("schedule", [{"schedule": "step", "step_size": 1, "gamma": 0.5}, {"schedule": "cosine"}])
def test_steps_of_whole_data_epochs_give_the_rows_of_epochs_on_both_trainers(schedule: dict[str, Any]) -> None:
    by_epochs = make_spec(epochs=3, **schedule)
    by_steps = make_spec(steps=3 * PER_EPOCH, eval_every=PER_EPOCH, **schedule)
    assert by_steps.training.evaluations == 3
    for seed in (0, 1):
        assert numbers(train_arm(by_steps, activation_index=1, seed=seed)) == numbers(
            train_arm(by_epochs, activation_index=1, seed=seed)
        )
    stacked_steps = train_stacked(by_steps, cuda_graphs=False)
    stacked_epochs = train_stacked(by_epochs, cuda_graphs=False)
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in stacked_steps)
    assert [numbers(outcome) for outcome in stacked_steps] == [numbers(outcome) for outcome in stacked_epochs]


def test_a_stacked_step_budget_matches_the_ordinary_trainer() -> None:
    outcomes = check_equivalence(make_spec(steps=9, eval_every=5, schedule="cosine"))
    assert all([report.step for report in outcome.reports] == [0, 5, 9] for outcome in outcomes)


def test_a_run_resumed_mid_stream_gives_the_numbers_of_an_uninterrupted_one(tmp_path: Path) -> None:
    # Evaluations end inside data epochs (every 3 of 4 steps), so the resumed run starts mid-way through epoch 2.
    spec = make_spec(dropout=0.2, steps=11, eval_every=3, schedule="step", step_size=1, gamma=0.7)
    uninterrupted = train_arm(spec, activation_index=0, seed=1)
    checkpoint = tmp_path / "arm.pt"

    def stop_after_two(report: EpochReport) -> bool:
        return report.epoch < 2

    stopped = train_arm(spec, activation_index=0, seed=1, on_epoch=stop_after_two, checkpoint_path=checkpoint)
    assert stopped.status == "cancelled" and stopped.epochs_completed == 2
    later: list[int] = []
    resumed = train_arm(
        spec, activation_index=0, seed=1, on_epoch=lambda report: later.append(report.step), checkpoint_path=checkpoint
    )
    assert later == [9, 11]
    assert numbers(resumed) == numbers(uninterrupted)


def test_a_stack_resumed_mid_stream_gives_the_numbers_of_an_uninterrupted_one(tmp_path: Path) -> None:
    spec = make_spec(steps=11, eval_every=3, schedule="cosine")
    uninterrupted = train_stacked(spec, cuda_graphs=False)
    paths: list[Path | None] = [tmp_path / f"member{index}.pt" for index in range(4)]
    stopped = train_stacked(
        spec, cuda_graphs=False, checkpoint_paths=paths, on_epoch=lambda reports: reports[0][1].epoch < 2
    )
    assert [outcome.status for outcome in stopped] == ["cancelled"] * 4
    resumed = train_stacked(spec, cuda_graphs=False, checkpoint_paths=paths)
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in resumed)
    assert [numbers(outcome) for outcome in resumed] == [numbers(outcome) for outcome in uninterrupted]
