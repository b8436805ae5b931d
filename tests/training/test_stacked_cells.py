"""Stacking across cells: cells that differ only in ``training.init`` train as one stack with the numbers of
unstacked runs (same tolerance as tests/training/test_stacked.py); each member gets its own cell's init."""

from __future__ import annotations

from typing import Any

import pytest

from app.spec import ExperimentSpec
from app.spec_factors import expand_cells, stack_key, stacking_cells
from tests.training.test_stacked import DEVICE, assert_outcomes_match, stacked_training, unstacked
from worker.training.datasets import load_dataset

INIT_FACTORIAL: dict[str, Any] = {
    "version": 2,
    "dataset": {"name": "spirals", "params": {"samples": 500}},
    "model": {"kind": "mlp", "hidden": [16, 16]},
    "activations": ["tanh", "relu"],
    "seeds": [0, 1],
    "training": {"epochs": 3, "batch_size": 64},
    "factors": {"training.init": ["auto", "default"]},
    "device": DEVICE,
}


def test_cells_differing_only_in_init_stack_together_and_match_unstacked_training() -> None:
    spec = ExperimentSpec.model_validate(INIT_FACTORIAL)
    cells = expand_cells(spec)
    assert [cell.spec.training.init for cell in cells] == ["auto", "default"]
    assert stack_key(cells[0].spec) == stack_key(cells[1].spec)
    data = load_dataset(cells[0].spec.dataset, validation_fraction=cells[0].spec.training.validation_fraction)
    members = [(cell, (arm.activation_index, arm.seed)) for cell in cells for arm in cell.spec.arms()]
    stacked = stacked_training(
        cells[0].spec,
        members=[member for _, member in members],
        member_specs=[cell.spec for cell, _ in members],
        data=data,
    )
    plain = [outcome for cell in cells for outcome in unstacked(cell.spec, [m for c, m in members if c is cell], data)]
    assert_outcomes_match(stacked, plain, examples=data.train_x.shape[0])
    # Each member kept its own cell's init: the two cells start apart and train apart.
    auto, default = stacked[0], stacked[len(stacked) // 2]
    assert auto.info is not None and default.info is not None
    assert auto.info.init_scheme != default.info.init_scheme
    assert auto.reports[0].train_loss != default.reports[0].train_loss


def test_a_member_spec_differing_beyond_init_is_rejected() -> None:
    spec = ExperimentSpec.model_validate({**INIT_FACTORIAL, "factors": {"training.lr": [0.01, 0.1]}})
    first, second = (cell.spec for cell in expand_cells(spec))
    assert stack_key(first) != stack_key(second)
    with pytest.raises(ValueError, match=r"member_specs\[1\]: may differ from the spec only in training.init"):
        stacked_training(first, members=[(0, 0), (0, 0)], member_specs=[first, second])


def test_stacking_cells_groups_the_cells_whose_specs_differ_only_in_init() -> None:
    spec = ExperimentSpec.model_validate(
        {**INIT_FACTORIAL, "factors": {"training.init": ["auto", "default"], "training.lr": [0.01, 0.1]}}
    )
    stored = spec.model_dump(mode="json")
    # Cells in expand_cells order: paths sorted (init, lr), so lr varies fastest.
    assert [stacking_cells(stored, index) for index in range(4)] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    v1 = {key: value for key, value in stored.items() if key not in ("version", "factors")}
    assert stacking_cells(v1, 0) == [0]
