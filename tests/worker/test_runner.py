"""The runner end to end on SQLite with the real engine: a tiny spirals MLP, a few epochs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.db import session_scope
from app.models import EpochMetric, Experiment, LayerMetric, Run, RunStatus
from app.models.types import utc_now
from app.runs.state_repository import claim_run
from tests.worker.conftest import TINY_SPEC, add_experiment
from worker import runner
from worker.lifecycle import is_transient_error
from worker.runner import execute_run
from worker.stacked_runner import execute_runs


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # No write retries: a simulated database error goes straight to the task's retry (tests/worker/test_db_retry.py
    # covers the write retries). No stacking: a task's runs (execute_runs, the tasks' path) train the ordinary way
    # (tests/worker/test_stacked_runner.py covers stacks).
    return Settings(
        checkpoint_dir=tmp_path / "checkpoints",
        data_dir=tmp_path / "no-data",
        run_heartbeat_seconds=60,
        database_retry_seconds=0,
        stack_runs=False,
    )


def _run(engine: Engine, run_id: uuid.UUID) -> Run:
    with session_scope(engine) as session:
        return session.execute(select(Run).where(Run.id == run_id)).scalar_one()


def _experiment_of(engine: Engine, run_id: uuid.UUID) -> Experiment:
    with session_scope(engine) as session:
        return session.execute(
            select(Experiment).join(Run, Run.experiment_id == Experiment.id).where(Run.id == run_id)
        ).scalar_one()


def _epochs(engine: Engine, run_id: uuid.UUID) -> list[EpochMetric]:
    with session_scope(engine) as session:
        statement = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
        return list(session.execute(statement).scalars())


def test_a_run_trains_to_success_with_one_row_per_epoch(engine: Engine, settings: Settings) -> None:
    run_id = add_experiment(engine)[0]
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.succeeded and outcome.attempt == 1
    run = _run(engine, run_id)
    assert (run.status, run.epochs_completed, run.attempt, run.device) == ("succeeded", 3, 1, "cpu")
    assert run.parameter_count and run.parameter_count > 0
    assert run.init_scheme and run.activation_placement and run.training_path == "unstacked"
    assert run.finished_at is not None and run.training_seconds is not None
    rows = _epochs(engine, run_id)
    # Epoch 0 is the network at initialisation: measured, not trained (no time), not counted as completed.
    assert [row.epoch for row in rows] == [0, 1, 2, 3]
    # 240 training examples in batches of 64: four optimiser steps an epoch.
    assert [row.step for row in rows] == [0, 4, 8, 12]
    assert rows[0].epoch_seconds is None and rows[0].train_loss is not None
    assert all(0.0 <= (row.test_accuracy or 0.0) <= 1.0 for row in rows)
    with session_scope(engine) as session:
        layers = session.execute(select(LayerMetric).where(LayerMetric.run_id == run_id)).scalars().all()
    assert {layer.epoch for layer in layers} == {0, 1, 2, 3}
    assert all(layer.grad_norm is not None for layer in layers if layer.epoch == 0)
    assert not (settings.checkpoint_dir / f"{run_id}.pt").exists()
    # The other three runs are still queued, so the experiment is running.
    assert _experiment_of(engine, run_id).status == "running"


def test_every_run_of_an_experiment_succeeding_ends_the_experiment(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine)
    batch = execute_runs(run_ids=run_ids, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert [outcome.status for outcome in batch.outcomes] == [RunStatus.succeeded] * 4
    experiment = _experiment_of(engine, run_ids[0])
    assert experiment.status == "succeeded" and experiment.finished_at is not None


def test_a_second_delivery_of_a_finished_run_does_nothing(engine: Engine, settings: Settings) -> None:
    run_id = add_experiment(engine)[0]
    execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    outcome = execute_run(run_id=run_id, worker_host="w2", task_id="t1", engine=engine, settings=settings)
    assert outcome.status is None
    assert _run(engine, run_id).attempt == 1
    assert len(_epochs(engine, run_id)) == 4


def test_a_run_of_a_cancelled_experiment_never_starts(engine: Engine, settings: Settings) -> None:
    run_id = add_experiment(engine)[0]
    with session_scope(engine) as session:
        experiment_id = session.execute(select(Run.experiment_id).where(Run.id == run_id)).scalar_one()
        session.execute(update(Experiment).where(Experiment.id == experiment_id).values(cancel_requested_at=utc_now()))
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.cancelled
    assert _run(engine, run_id).epochs_completed == 0
    assert _epochs(engine, run_id) == []


def test_cancel_during_training_stops_at_the_next_epoch_and_keeps_finished_epochs(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "epochs": 6}}
    run_id = add_experiment(engine, spec)[0]
    real_upsert = runner.upsert_epoch_metrics_of_runs

    def upsert_then_cancel_after_epoch_two(**arguments: Any) -> None:
        real_upsert(**arguments)
        if arguments["writes"][0][2].epoch == 2:
            session = arguments["session"]
            experiment_id = session.execute(select(Run.experiment_id).where(Run.id == run_id)).scalar_one()
            session.execute(
                update(Experiment).where(Experiment.id == experiment_id).values(cancel_requested_at=utc_now())
            )

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", upsert_then_cancel_after_epoch_two)
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.cancelled
    run = _run(engine, run_id)
    assert (run.status, run.epochs_completed) == ("cancelled", 2)
    assert [row.epoch for row in _epochs(engine, run_id)] == [0, 1, 2]


def test_a_missing_dataset_fails_the_run_with_the_reason_and_is_not_retried(engine: Engine, settings: Settings) -> None:
    spec = {**TINY_SPEC, "dataset": {"name": "mnist"}, "seeds": [0], "activations": ["relu"]}
    run_id = add_experiment(engine, spec)[0]
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.failed
    run = _run(engine, run_id)
    assert run.status == "failed"
    assert run.error is not None and "DatasetUnavailableError" in run.error and "mnist" in run.error.lower()
    experiment = _experiment_of(engine, run_id)
    assert experiment.status == "failed" and experiment.error is not None


def test_a_transient_error_keeps_the_checkpoint_and_the_retry_resumes_to_the_same_numbers(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint after every epoch, so the retry resumes from epoch 2's.
    settings = settings.model_copy(update={"checkpoint_interval_seconds": 0})
    spec = {**TINY_SPEC, "activations": ["tanh"], "seeds": [3], "training": {**TINY_SPEC["training"], "epochs": 4}}
    reference_id = add_experiment(engine, spec)[0]
    execute_run(run_id=reference_id, worker_host="w1", task_id="reference", engine=engine, settings=settings)
    reference = [(row.epoch, row.train_loss, row.test_accuracy) for row in _epochs(engine, reference_id)]

    run_id = add_experiment(engine, spec)[0]
    real_upsert = runner.upsert_epoch_metrics_of_runs

    def database_drops_at_epoch_three(**arguments: Any) -> None:
        if arguments["writes"][0][2].epoch == 3:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        real_upsert(**arguments)

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", database_drops_at_epoch_three)
    with pytest.raises(OperationalError):
        execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert (settings.checkpoint_dir / f"{run_id}.pt").exists()
    assert _run(engine, run_id).status == "running"

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", real_upsert)
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.succeeded and outcome.attempt == 2
    resumed = [(row.epoch, row.train_loss, row.test_accuracy) for row in _epochs(engine, run_id)]
    assert resumed == reference
    # The retry went on from epoch 2's checkpoint: epoch 0 and the first epochs are the first attempt's rows.
    assert [(row.epoch, row.attempt) for row in _epochs(engine, run_id)] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2)]


def test_a_worker_whose_run_was_taken_over_stops_without_touching_it(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "epochs": 5}}
    run_id = add_experiment(engine, spec)[0]
    real_on_epoch = runner._EpochWriter.on_epoch

    def on_epoch_then_lose_the_run(self: Any, report: Any) -> bool | None:
        answer = real_on_epoch(self, report)
        if report.epoch == 1:
            # Another worker takes the run over (its heartbeat looked stale to it).
            with session_scope(engine) as session:
                claim_run(
                    session=session,
                    run_id=run_id,
                    worker_host="w2",
                    task_id="other",
                    stale_after=timedelta(seconds=-1),
                )
        return answer

    monkeypatch.setattr(runner._EpochWriter, "on_epoch", on_epoch_then_lose_the_run)
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status is None
    run = _run(engine, run_id)
    assert (run.status, run.attempt, run.worker_host) == ("running", 2, "w2")
    assert [(row.epoch, row.attempt) for row in _epochs(engine, run_id)] == [(0, 1), (1, 1)]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")), True),
        (ConnectionError("broker unreachable"), True),
        (ValueError("bad data"), False),
        (RuntimeError("diverged"), False),
    ],
)
def test_only_infrastructure_errors_count_as_transient(error: BaseException, transient: bool) -> None:
    assert is_transient_error(error) is transient


def test_sqlite_schema_errors_are_not_transient_but_lock_contention_is() -> None:
    import sqlite3

    assert not is_transient_error(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: runs")))
    assert is_transient_error(OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")))


def test_a_run_stopped_by_the_time_limit_is_timed_out_keeps_its_epochs_and_the_rest_are_handed_back(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**TINY_SPEC, "training": {**TINY_SPEC["training"], "epochs": 5}}
    first, second, *_ = add_experiment(engine, spec)
    real_upsert = runner.upsert_epoch_metrics_of_runs

    def time_runs_out_in_epoch_three(**arguments: Any) -> None:
        if arguments["writes"][0][2].epoch == 3:
            raise SoftTimeLimitExceeded()
        real_upsert(**arguments)

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", time_runs_out_in_epoch_three)
    batch = execute_runs(run_ids=[first, second], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert [outcome.status for outcome in batch.outcomes] == [RunStatus.timed_out]
    assert batch.not_started == [second]
    run = _run(engine, first)
    assert (run.status, run.epochs_completed) == ("timed_out", 2)
    assert run.error is not None and "time limit" in run.error
    assert [row.epoch for row in _epochs(engine, first)] == [0, 1, 2]
    assert _run(engine, second).status == "queued"
    assert not (settings.checkpoint_dir / f"{first}.pt").exists()


def test_a_run_whose_worker_keeps_dying_fails_after_the_attempt_limit(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "checkpoints", task_max_retries=1)
    run_id = add_experiment(engine)[0]
    # Two deliveries of the task whose workers were lost before they recorded anything.
    for _ in range(2):
        with session_scope(engine) as session:
            claim_run(session=session, run_id=run_id, worker_host="lost", task_id="t1", stale_after=timedelta(0))
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.failed and outcome.attempt == 3
    run = _run(engine, run_id)
    assert run.status == "failed" and run.error is not None and "started 2 times without finishing" in run.error
    assert _epochs(engine, run_id) == []
