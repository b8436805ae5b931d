"""The step column of an epoch-based run: the optimiser steps taken before each row, on both trainers."""

from __future__ import annotations

import pytest

from app.spec_steps import batch_sizes
from tests.training.test_initial_epoch import make_spec
from worker.training.stacked import train_stacked
from worker.training.trainer import train_arm


def test_batch_sizes_give_a_last_single_example_to_a_full_batch() -> None:
    assert batch_sizes(240, 64) == [64, 64, 64, 48]
    assert batch_sizes(240, 239) == [240]
    assert batch_sizes(241, 80) == [80, 81, 80]  # where the batch order of existing runs has put it
    assert batch_sizes(1, 64) == [1]


# spirals with 300 samples trains on 240: four batches of 64 (the last 48), or one when the single example
# left over by 239 joins the batch before.
@pytest.mark.parametrize(("batch_size", "per_epoch"), [(64, 4), (239, 1)])
def test_each_row_counts_the_steps_taken_before_it_on_both_trainers(batch_size: int, per_epoch: int) -> None:
    spec = make_spec(model={"kind": "mlp", "hidden": [6]}, activations=["relu", "tanh"], batch_size=batch_size)
    expected = [0, per_epoch, 2 * per_epoch, 3 * per_epoch]
    unstacked = [train_arm(spec, activation_index=index, seed=seed) for index in (0, 1) for seed in (0, 1)]
    stacked = train_stacked(spec, cuda_graphs=False)
    assert all(outcome.info is not None and outcome.info.training_path == "stacked" for outcome in stacked)
    for outcome in [*unstacked, *stacked]:
        assert [report.epoch for report in outcome.reports] == [0, 1, 2, 3]
        assert [report.step for report in outcome.reports] == expected
