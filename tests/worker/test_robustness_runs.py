"""Robustness rows of trained runs: written with the run's end by both runners, once, with the engine's numbers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.db import session_scope
from app.models import EpochMetric, RobustnessResult, Run, RunStatus
from app.spec import ExperimentSpec
from tests.worker.conftest import TINY_SPEC, add_experiment, one_worker_settings, runs_in_order
from worker import runner
from worker.runner import execute_run
from worker.stacked_runner import execute_runs

EVALUATION = {"noise_std": [0.0, 0.5], "fgsm_epsilon": [0.0, 0.2], "pgd_epsilon": [0.2], "pgd_steps": 3}
ROBUST_SPEC: dict[str, Any] = {**TINY_SPEC, "version": 2, "seeds": [0], "evaluation": EVALUATION}
EXPECTED_POINTS = [("noise", 0.0), ("noise", 0.5), ("fgsm", 0.0), ("fgsm", 0.2), ("pgd", 0.2)]


def _settings(tmp_path: Path, *, stack_runs: bool) -> Settings:
    return one_worker_settings(tmp_path, stack_runs=stack_runs, checkpoint_interval_seconds=0)


def _points(engine: Engine, run_id: uuid.UUID) -> list[RobustnessResult]:
    with session_scope(engine) as session:
        statement = select(RobustnessResult).where(RobustnessResult.run_id == run_id).order_by(RobustnessResult.id)
        return list(session.execute(statement).scalars())


def _assert_engine_numbers(engine: Engine, run: Run, submitted: dict[str, Any] = ROBUST_SPEC) -> None:
    from worker.training.trainer import train_arm

    spec = ExperimentSpec.model_validate(submitted)
    reference = train_arm(spec, activation_index=run.activation_index, seed=run.seed, device="cpu").robustness
    rows = _points(engine, run.id)
    assert [(row.kind, row.strength) for row in rows] == EXPECTED_POINTS
    assert [row.accuracy for row in rows] == pytest.approx([point.accuracy for point in reference], abs=1e-9)
    assert [row.loss for row in rows] == pytest.approx([point.loss for point in reference], rel=1e-4)
    clean = rows[0].accuracy
    # Zero strengths are the clean test accuracy of the last epoch; the attacks take accuracy away.
    with session_scope(engine) as session:
        final = session.execute(
            select(EpochMetric.test_accuracy).where(EpochMetric.run_id == run.id, EpochMetric.epoch == 3)
        ).scalar_one()
    assert clean == pytest.approx(final, abs=1e-9) and rows[2].accuracy == pytest.approx(final, abs=1e-9)
    assert rows[3].accuracy < clean and rows[4].accuracy < clean


@pytest.mark.parametrize("stack_runs", [True, False], ids=["stacked", "ordinary"])
def test_each_run_gets_its_robustness_rows_with_the_ordinary_trainers_numbers(
    engine: Engine, tmp_path: Path, stack_runs: bool
) -> None:
    settings = _settings(tmp_path, stack_runs=stack_runs)
    run_ids = add_experiment(engine, ROBUST_SPEC)
    for run_id in run_ids:
        execute_runs(run_ids=[run_id], worker_host="w1", task_id=f"t-{run_id}", engine=engine, settings=settings)
    runs = runs_in_order(engine, run_ids)
    assert {run.status for run in runs} == {"succeeded"}
    assert {run.training_path for run in runs} == {"stacked" if stack_runs else "unstacked"}
    for run in runs:
        _assert_engine_numbers(engine, run)


def test_a_run_without_an_evaluation_block_has_no_rows(engine: Engine, tmp_path: Path) -> None:
    run_id = add_experiment(engine, {**TINY_SPEC, "activations": ["relu"], "seeds": [0]})[0]
    execute_run(run_id=run_id, worker_host="w1", engine=engine, settings=_settings(tmp_path, stack_runs=False))
    assert runs_in_order(engine, [run_id])[0].status == "succeeded"
    assert _points(engine, run_id) == []


def test_a_run_that_crashed_after_its_last_epoch_gets_its_rows_once_when_resumed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, stack_runs=False)
    spec = {**ROBUST_SPEC, "activations": ["tanh"], "seeds": [1]}
    run_id = add_experiment(engine, spec)[0]
    real_write = runner.replace_robustness

    def database_drops_while_recording_the_end(**arguments: Any) -> None:
        real_write(**arguments)
        raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(runner, "replace_robustness", database_drops_while_recording_the_end)
    with pytest.raises(OperationalError):
        execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    (run,) = runs_in_order(engine, [run_id])
    assert (run.status, run.epochs_completed) == ("running", 3)
    assert _points(engine, run_id) == [], "the end's transaction rolled back with its rows"
    assert (settings.checkpoint_dir / f"{run_id}.pt").exists()

    monkeypatch.setattr(runner, "replace_robustness", real_write)
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.succeeded and outcome.attempt == 2
    (run,) = runs_in_order(engine, [run_id])
    _assert_engine_numbers(engine, run, spec)
    assert {row.attempt for row in _points(engine, run_id)} == {2}
