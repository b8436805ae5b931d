"""Metric upserts: one row per (run, epoch[, layer]) however often written, fenced by the attempt."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from app.db import session_scope
from app.metrics.write_repository import upsert_epoch_metrics
from app.models import EpochMetric, LayerMetric
from app.runs.state_repository import StaleAttemptError, claim_run
from tests.worker.conftest import add_experiment
from worker.training.reports import EpochReport, LayerReport


@pytest.fixture
def engine(database: Engine) -> Engine:
    """These tests run on SQLite and on PostgreSQL."""
    return database


def _report(epoch: int, accuracy: float, *, loss: float | None = 0.5) -> EpochReport:
    layers = [
        LayerReport(
            layer=index,
            layer_name=f"hidden.{index}",
            grad_norm=0.1 * (index + 1),
            weight_norm=1.0,
            activation_mean=0.0,
            activation_std=1.0,
            dead_fraction=0.0,
            saturated_fraction=0.0,
            activation_parameters={"alpha": accuracy},
        )
        for index in range(2)
    ]
    return EpochReport(
        epoch=epoch,
        train_loss=loss,
        train_accuracy=accuracy,
        test_loss=loss,
        test_accuracy=accuracy,
        epoch_seconds=0.1,
        samples_per_second=1000.0,
        lr=0.01,
        layers=layers,
    )


def _claim(engine: Engine, run_id, task_id: str = "task-1") -> int:
    with session_scope(engine) as session:
        claimed = claim_run(
            session=session, run_id=run_id, worker_host="w", task_id=task_id, stale_after=timedelta(minutes=5)
        )
    assert claimed is not None
    return claimed.attempt


def _write(engine: Engine, run_id, attempt: int, report: EpochReport) -> None:
    with session_scope(engine) as session:
        upsert_epoch_metrics(session=session, run_id=run_id, attempt=attempt, report=report)


def _epoch_rows(engine: Engine, run_id) -> list[EpochMetric]:
    with session_scope(engine) as session:
        return list(session.execute(select(EpochMetric).where(EpochMetric.run_id == run_id)).scalars())


def _layer_count(engine: Engine, run_id) -> int:
    with session_scope(engine) as session:
        return session.execute(select(func.count()).where(LayerMetric.run_id == run_id)).scalar_one()


def test_writing_an_epoch_twice_keeps_one_row_with_the_latest_values(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    attempt = _claim(engine, run_id)
    _write(engine, run_id, attempt, _report(1, 0.4))
    _write(engine, run_id, attempt, _report(1, 0.9))
    rows = _epoch_rows(engine, run_id)
    assert len(rows) == 1
    assert rows[0].test_accuracy == pytest.approx(0.9)
    assert _layer_count(engine, run_id) == 2
    with session_scope(engine) as session:
        layer = session.execute(select(LayerMetric).where(LayerMetric.layer == 1)).scalar_one()
    assert layer.activation_parameters == {"alpha": 0.9}


def test_a_redelivered_attempt_overwrites_the_rows_of_the_earlier_one(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    first = _claim(engine, run_id)
    _write(engine, run_id, first, _report(1, 0.4))
    second = _claim(engine, run_id)
    _write(engine, run_id, second, _report(1, 0.5))
    _write(engine, run_id, second, _report(2, 0.6))
    rows = sorted(_epoch_rows(engine, run_id), key=lambda row: row.epoch)
    assert [(row.epoch, row.attempt) for row in rows] == [(1, second), (2, second)]
    assert _layer_count(engine, run_id) == 4


def test_a_stale_attempt_cannot_write_metrics(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    stale = _claim(engine, run_id)
    _claim(engine, run_id)
    with pytest.raises(StaleAttemptError):
        _write(engine, run_id, stale, _report(1, 0.99))
    assert _epoch_rows(engine, run_id) == []
    assert _layer_count(engine, run_id) == 0


def test_non_finite_values_are_stored_as_null(engine: Engine) -> None:
    run_id = add_experiment(engine)[0]
    attempt = _claim(engine, run_id)
    report = _report(1, 0.1, loss=None)
    report.grad_norm_ratio = math.inf
    report.layers[0].grad_norm = math.nan
    _write(engine, run_id, attempt, report)
    row = _epoch_rows(engine, run_id)[0]
    assert row.train_loss is None and row.grad_norm_ratio is None
    with session_scope(engine) as session:
        layer = session.execute(select(LayerMetric).where(LayerMetric.layer == 0)).scalar_one()
    assert layer.grad_norm is None
