"""Factorial experiments on the real worker: each run trains with its cell's spec, alone or stacked (within its
cell, or across the cells that differ only in training.init)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.experiments.service import submit_experiment
from app.models import EpochMetric, Run
from app.spec import ExperimentSpec
from app.spec_factors import run_spec
from tests.worker.conftest import TINY_SPEC, add_experiment, one_worker_settings
from worker.runner import execute_run
from worker.stacked_runner import execute_runs

INIT_FACTORIAL: dict[str, Any] = {
    **TINY_SPEC,
    "version": 2,
    "activations": ["tanh"],
    "seeds": [0],
    "training": {**TINY_SPEC["training"], "epochs": 1},
    "factors": {"training.init": ["auto", "default"]},
}


class _Dispatcher:
    """Takes the runs and sends them nowhere: the test executes them itself."""

    def choose_queue(self, *, session: Session, device: str) -> str:
        return "cpu"

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        return None


def _submit(engine: Engine, spec: dict[str, Any], settings: Settings) -> list[Run]:
    with Session(engine, expire_on_commit=False) as session:
        submission = submit_experiment(session=session, dispatcher=_Dispatcher(), payload=spec, limits=settings)
        return sorted(submission.runs, key=lambda run: (run.cell_index, run.activation_index, run.seed))


def _run(engine: Engine, run_id: uuid.UUID) -> Run:
    with session_scope(engine) as session:
        return session.execute(select(Run).where(Run.id == run_id)).scalar_one()


def _losses(engine: Engine, run_id: uuid.UUID) -> list[float | None]:
    """Train loss, test loss and test accuracy of each epoch, flat."""
    with session_scope(engine) as session:
        statement = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
        rows = session.execute(statement).scalars()
        return [value for row in rows for value in (row.train_loss, row.test_loss, row.test_accuracy)]


def _reference(spec: ExperimentSpec, run: Run) -> list[float]:
    from worker.training.trainer import train_arm

    outcome = train_arm(spec, activation_index=run.activation_index, seed=run.seed, device="cpu")
    return [value for r in outcome.reports for value in (r.train_loss, r.test_loss, r.test_accuracy)]


def test_each_cell_trains_with_its_own_setting_and_the_base_cell_matches_the_v1_spec(
    engine: Engine, tmp_path: Path
) -> None:
    settings = one_worker_settings(tmp_path, stack_runs=False)
    runs = _submit(engine, INIT_FACTORIAL, settings)
    assert [(run.cell_index, run.cell_label, run.cell_levels) for run in runs] == [
        (0, "init=auto", {"training.init": "auto"}),
        (1, "init=default", {"training.init": "default"}),
    ]
    for run in runs:
        outcome = execute_run(run_id=run.id, worker_host="w1", task_id=f"t-{run.id}", engine=engine, settings=settings)
        assert outcome.status == "succeeded"
    auto, default = (_run(engine, run.id) for run in runs)
    # init=auto picks the tanh scheme; default leaves PyTorch's own initialisation.
    assert auto.init_scheme != default.init_scheme
    assert "xavier" in (auto.init_scheme or "") and "default" in (default.init_scheme or "")
    assert _losses(engine, auto.id) != _losses(engine, default.id)
    stored = ExperimentSpec.model_validate(INIT_FACTORIAL).model_dump(mode="json")
    for run in (auto, default):
        expected = _reference(run_spec(stored, run.cell_levels), run)
        assert _losses(engine, run.id) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # The cell whose level is the base's gives the numbers of the same spec without factors (version 1).
    v1 = {key: value for key, value in INIT_FACTORIAL.items() if key not in ("version", "factors")}
    [v1_run_id] = add_experiment(engine, v1)
    execute_run(run_id=v1_run_id, worker_host="w1", task_id="t-v1", engine=engine, settings=settings)
    v1_run = _run(engine, v1_run_id)
    assert (v1_run.cell_index, v1_run.cell_label, v1_run.cell_levels) == (0, None, None)
    assert _losses(engine, v1_run_id) == pytest.approx(_losses(engine, auto.id), rel=1e-6, abs=1e-9)


def test_a_stack_takes_the_runs_of_one_cell_only_and_each_cell_keeps_its_numbers(
    engine: Engine, tmp_path: Path
) -> None:
    settings = one_worker_settings(tmp_path)
    spec = {
        **TINY_SPEC,
        "version": 2,
        "training": {**TINY_SPEC["training"], "epochs": 2},
        "factors": {"training.lr": [0.01, 0.05]},
    }
    runs = _submit(engine, spec, settings)
    assert len(runs) == 2 * 2 * 2
    first_cell = [run for run in runs if run.cell_index == 0]
    batch = execute_runs(run_ids=[first_cell[0].id], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {outcome.run_id for outcome in batch.outcomes} == {run.id for run in first_cell}
    assert all(_run(engine, run.id).status == "queued" for run in runs if run.cell_index == 1)
    second_cell = [run for run in runs if run.cell_index == 1]
    execute_runs(run_ids=[second_cell[0].id], worker_host="w1", task_id="t2", engine=engine, settings=settings)
    stored = ExperimentSpec.model_validate(spec).model_dump(mode="json")
    for run in runs:
        stored_run = _run(engine, run.id)
        assert (stored_run.status, stored_run.training_path) == ("succeeded", "stacked")
        expected = _reference(run_spec(stored, run.cell_levels), run)
        assert _losses(engine, run.id) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert _losses(engine, first_cell[0].id) != _losses(engine, second_cell[0].id)


def test_a_seed_fixes_the_data_order_in_every_cell_unless_a_factor_changes_the_data() -> None:
    import torch

    from app.spec_factors import expand_cells, pairing_note
    from worker.training.trainer import batch_indices

    def orders(spec: ExperimentSpec) -> list[list[int]]:
        return [
            torch.cat(
                batch_indices(
                    seed=0,
                    epoch=1,
                    size=cell.spec.dataset.train_size,
                    batch_size=cell.spec.training.batch_size,
                    device=torch.device("cpu"),
                )
            ).tolist()
            for cell in expand_cells(spec)
        ]

    paired = ExperimentSpec.model_validate(
        {**TINY_SPEC, "version": 2, "factors": {"training.lr": [0.01, 0.1], "model.hidden": [[8], [8, 8]]}}
    )
    first, *others = orders(paired)
    assert all(order == first for order in others)
    assert "across cells" in pairing_note(paired)
    by_data = ExperimentSpec.model_validate(
        {**TINY_SPEC, "version": 2, "factors": {"dataset.params.samples": [300, 400]}}
    )
    small, large = orders(by_data)
    assert len(small) != len(large)
    assert pairing_note(by_data).startswith("seeds pair activations within each cell only")


def test_cells_differing_only_in_init_train_as_one_stack_with_their_own_numbers(engine: Engine, tmp_path: Path) -> None:
    settings = one_worker_settings(tmp_path)
    spec = {**INIT_FACTORIAL, "activations": ["tanh", "relu"], "seeds": [0, 1], "training": TINY_SPEC["training"]}
    runs = _submit(engine, spec, settings)
    assert len(runs) == 2 * 2 * 2
    batch = execute_runs(run_ids=[runs[0].id], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {outcome.run_id for outcome in batch.outcomes} == {run.id for run in runs}
    stored_runs = [_run(engine, run.id) for run in runs]
    assert {(run.status, run.training_path, run.stack_size) for run in stored_runs} == {("succeeded", "stacked", 8)}
    assert len({run.stack_id for run in stored_runs}) == 1
    assert {run.cell_index for run in stored_runs} == {0, 1}
    [reason] = {run.stacking_reason for run in stored_runs}
    assert reason is not None
    assert reason.endswith(
        "; the stack spans 2 cells (init=auto; init=default), which differ only in training.init, "
        "given to each member at initialisation"
    )
    stored = ExperimentSpec.model_validate(spec).model_dump(mode="json")
    for run in stored_runs:
        expected = _reference(run_spec(stored, run.cell_levels), run)
        assert _losses(engine, run.id) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    by_cell = {(run.cell_index, run.activation_index, run.seed): run for run in stored_runs}
    assert by_cell[0, 0, 0].init_scheme != by_cell[1, 0, 0].init_scheme
    assert _losses(engine, by_cell[0, 0, 0].id) != _losses(engine, by_cell[1, 0, 0].id)
