"""Each run records how it trained: its stack (id and size) or why it trained alone (runs.stacking_reason)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.config import Settings
from app.models import RunStatus
from tests.worker.conftest import GRID_SPEC, TINY_SPEC, add_experiment, one_worker_settings, runs_in_order
from worker.runner import ONE_RUN_PATH, execute_run
from worker.stacked_runner import STACKING_OFF, execute_runs


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return one_worker_settings(tmp_path)


def test_a_stacked_grid_records_one_stack_its_size_and_why_it_stacked(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    runs = runs_in_order(engine, run_ids)
    assert {run.training_path for run in runs} == {"stacked"}
    assert len({run.stack_id for run in runs}) == 1 and runs[0].stack_id is not None
    uuid.UUID(str(runs[0].stack_id))
    assert {run.stack_size for run in runs} == {6}
    assert {run.stacking_reason for run in runs} == {
        "on a CPU a small MLP is bound by per-step overhead, which a stacked grid shares among its members"
    }


def test_a_spec_not_recommended_for_stacking_says_why(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, {**GRID_SPEC, "model": {"kind": "mlp", "hidden": [8], "dropout": 0.1}})
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    run = runs_in_order(engine, run_ids[:1])[0]
    assert (run.training_path, run.stack_id, run.stack_size) == ("unstacked", None, None)
    assert run.stacking_reason is not None
    assert run.stacking_reason.startswith("stacking not recommended: model.dropout > 0")


def test_a_recurrent_model_says_it_has_no_stacked_form(engine: Engine, settings: Settings) -> None:
    spec = {**TINY_SPEC, "dataset": {"name": "digits"}, "model": {"kind": "rnn", "hidden_size": 4}, "seeds": [0]}
    run_ids = add_experiment(engine, {**spec, "training": {"epochs": 1, "batch_size": 256}})
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    run = runs_in_order(engine, run_ids[:1])[0]
    assert run.status == RunStatus.succeeded.value
    assert run.stacking_reason == (
        "stacking not recommended: model kind 'rnn' has no stacked form (mlp and cnn do); "
        "the arms train one after another"
    )


def test_stacking_off_and_the_one_run_path_say_so(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    off = settings.model_copy(update={"stack_runs": False})
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=off)
    execute_run(run_id=run_ids[1], worker_host="w1", task_id="t2", engine=engine, settings=settings)
    first, second = runs_in_order(engine, run_ids[:2])
    assert (first.training_path, first.stacking_reason) == ("unstacked", STACKING_OFF)
    assert (second.training_path, second.stacking_reason) == ("unstacked", ONE_RUN_PATH)


def test_a_stackable_run_with_no_companion_left_says_it_found_none(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    one = settings.model_copy(update={"stack_chunk_runs": 1})
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=one)
    run = runs_in_order(engine, run_ids[:1])[0]
    assert (run.training_path, run.stack_id) == ("unstacked", None)
    assert run.stacking_reason is not None
    assert run.stacking_reason.startswith("no other queued run of its cell was free to stack with")
    assert run.stacking_reason.endswith("shares among its members")


def test_the_engine_gives_its_reason_where_it_trains_members_alone() -> None:
    from app.spec import ExperimentSpec
    from worker.training.stacked import train_stacked

    spec = ExperimentSpec.model_validate(
        {
            **TINY_SPEC,
            "dataset": {"name": "digits"},
            "model": {"kind": "rnn", "hidden_size": 4},
            "seeds": [0],
            "training": {"epochs": 1, "batch_size": 256},
        }
    )
    started: list[tuple[int, Any]] = []
    train_stacked(spec, members=[(0, 0), (1, 0)], on_start=lambda position, info: started.append((position, info)))
    assert [position for position, _ in started] == [0, 1]
    assert {info.training_path for _, info in started} == {"unstacked"}
    assert {info.stacking_reason for _, info in started} == {
        "model kind 'rnn' has no stacked form (mlp and cnn do); the arms train one after another"
    }
