"""Writes ride out a short database outage: repeated while the error is transient and patience lasts."""

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
from app.models import EpochMetric, Run, RunStatus
from tests.worker.conftest import TINY_SPEC, add_experiment
from worker import db_retry, runner
from worker.db_retry import retry_transient
from worker.lifecycle import is_transient_error
from worker.runner import execute_run

REFUSED = OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def _failing(times: int, error: BaseException) -> Any:
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "written"

    operation.calls = calls  # type: ignore[attr-defined]
    return operation


def test_a_transient_failure_is_repeated_with_growing_pauses_until_it_passes() -> None:
    clock = FakeClock()
    operation = _failing(4, REFUSED)
    result = retry_transient(
        operation, what="epoch 3", patience_seconds=60, is_transient=is_transient_error, sleep=clock.sleep, clock=clock
    )
    assert result == "written"
    assert len(operation.calls) == 5
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0]


def test_after_the_patience_the_error_goes_up_to_the_task() -> None:
    clock = FakeClock()
    operation = _failing(100, REFUSED)
    with pytest.raises(OperationalError):
        retry_transient(
            operation,
            what="epoch 3",
            patience_seconds=10,
            is_transient=is_transient_error,
            sleep=clock.sleep,
            clock=clock,
        )
    assert sum(clock.pauses) == pytest.approx(10)
    assert max(clock.pauses) <= db_retry.LONGEST_DELAY


def test_a_deterministic_error_is_not_repeated() -> None:
    clock = FakeClock()
    operation = _failing(1, ValueError("bad row"))
    with pytest.raises(ValueError, match="bad row"):
        retry_transient(
            operation,
            what="epoch 3",
            patience_seconds=60,
            is_transient=is_transient_error,
            sleep=clock.sleep,
            clock=clock,
        )
    assert len(operation.calls) == 1 and clock.pauses == []


def test_a_run_rides_out_a_database_outage_in_one_attempt_without_losing_an_epoch(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "checkpoints", run_heartbeat_seconds=60, database_retry_seconds=30)
    run_id = add_experiment(engine, {**TINY_SPEC, "training": {**TINY_SPEC["training"], "epochs": 4}})[0]
    monkeypatch.setattr(db_retry, "FIRST_DELAY", 0.01)
    real_upsert = runner.upsert_epoch_metrics_of_runs
    failures: list[int] = []

    def database_away_for_three_writes_of_epoch_two(**arguments: Any) -> None:
        if arguments["writes"][0][2].epoch == 2 and len(failures) < 3:
            failures.append(1)
            raise REFUSED
        real_upsert(**arguments)

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", database_away_for_three_writes_of_epoch_two)
    outcome = execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert outcome.status == RunStatus.succeeded and outcome.attempt == 1
    assert len(failures) == 3
    with session_scope(engine) as session:
        rows = session.execute(
            select(EpochMetric.epoch, EpochMetric.attempt).where(EpochMetric.run_id == run_id).order_by("epoch")
        ).all()
        run = session.execute(select(Run).where(Run.id == run_id)).scalar_one()
    # Epoch 0 (the network at initialisation) and the 4 trained epochs, each written once by attempt 1.
    assert [tuple(row) for row in rows] == [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]
    assert (run.status, run.attempt, run.epochs_completed) == ("succeeded", 1, 4)


def test_the_retry_of_a_write_is_bounded_by_the_setting(engine: Engine, tmp_path: Path, monkeypatch: Any) -> None:
    settings = Settings(checkpoint_dir=tmp_path / "checkpoints", run_heartbeat_seconds=60, database_retry_seconds=0.2)
    run_id: uuid.UUID = add_experiment(engine)[0]
    monkeypatch.setattr(db_retry, "FIRST_DELAY", 0.01)

    def database_gone(**_: Any) -> None:
        raise REFUSED

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", database_gone)
    with pytest.raises(OperationalError):
        execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    # Left running with its checkpoint for the task's retry, which resumes it.
    with session_scope(engine) as session:
        assert session.execute(select(Run.status).where(Run.id == run_id)).scalar_one() == "running"


def test_a_write_interrupted_by_the_worker_stopping_leaves_the_run_for_redelivery_instead_of_failing_it(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint after every epoch: epoch 1's must survive the interruption for the redelivery to resume from.
    settings = Settings(
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_interval_seconds=0,
        run_heartbeat_seconds=60,
        database_retry_seconds=30,
    )
    run_id = add_experiment(engine)[0]
    real_upsert = runner.upsert_epoch_metrics_of_runs

    def stopped_during_epoch_two(**arguments: Any) -> None:
        if arguments["writes"][0][2].epoch == 2:
            # Billiard's SystemExit raised inside a block whose cleanup then fails, as torch.save does.
            try:
                raise SystemExit(-253)
            except SystemExit:
                raise RuntimeError("unexpected pos 61632 vs 61532") from None
        real_upsert(**arguments)

    monkeypatch.setattr(runner, "upsert_epoch_metrics_of_runs", stopped_during_epoch_two)
    with pytest.raises(SystemExit):
        execute_run(run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=settings)
    with session_scope(engine) as session:
        run = session.execute(select(Run).where(Run.id == run_id)).scalar_one()
    assert (run.status, run.error, run.epochs_completed) == ("running", None, 1)
    assert (settings.checkpoint_dir / f"{run_id}.pt").exists()
