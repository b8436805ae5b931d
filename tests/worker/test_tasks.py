"""The task's retry policy: transient errors are retried a bounded number of times, others never."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.config import get_settings
from app.db import session_scope
from app.models import Experiment, Run
from tests.worker.conftest import add_experiment
from worker import lifecycle, tasks
from worker.lifecycle import BatchOutcome, RunOutcome
from worker.tasks import retry_countdown, train_runs


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> list[list[uuid.UUID]]:
    """Record the runner's calls; the task's failure handler writes to the test database."""
    recorded: list[list[uuid.UUID]] = []
    monkeypatch.setattr(lifecycle, "session_scope", lambda: session_scope(engine))
    return recorded


def _fail_with(error: BaseException, recorded: list[list[uuid.UUID]]) -> Any:
    def execute_runs(*, run_ids: list[uuid.UUID], **_: Any) -> BatchOutcome:
        recorded.append(run_ids)
        raise error

    return execute_runs


def test_a_transient_error_is_retried_up_to_the_limit_then_the_run_is_failed(
    engine: Engine, calls: list[list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = add_experiment(engine)[0]
    error = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    monkeypatch.setattr(tasks, "execute_runs", _fail_with(error, calls))
    result = train_runs.apply(kwargs={"run_ids": [str(run_id)]})
    assert result.failed()
    assert len(calls) == get_settings().task_max_retries + 1
    with session_scope(engine) as session:
        run = session.execute(select(Run).where(Run.id == run_id)).scalar_one()
        experiment = session.get(Experiment, run.experiment_id)
    assert run.status == "failed"
    assert run.error is not None and "gave up after" in run.error and "connection refused" in run.error
    assert experiment is not None and experiment.status == "running"


def test_a_deterministic_error_is_not_retried(
    engine: Engine, calls: list[list[uuid.UUID]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = add_experiment(engine)[0]
    monkeypatch.setattr(tasks, "execute_runs", _fail_with(RuntimeError("a bug"), calls))
    result = train_runs.apply(kwargs={"run_ids": [str(run_id)]})
    assert result.failed()
    assert len(calls) == 1


def test_the_task_reports_what_each_run_did(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = uuid.uuid4()

    def execute_runs(*, run_ids: list[uuid.UUID], **_: Any) -> BatchOutcome:
        return BatchOutcome(outcomes=[RunOutcome(run_ids[0], None)])

    monkeypatch.setattr(tasks, "execute_runs", execute_runs)
    result = train_runs.apply(kwargs={"run_ids": [str(run_id)]})
    assert result.get() == {"runs": {str(run_id): None}, "requeued": []}


def test_backoff_grows_exponentially_with_jitter_and_stays_bounded() -> None:
    for retries in range(12):
        countdown = retry_countdown(retries=retries, base=2, maximum=300)
        assert 0 <= countdown <= min(300, 2 * 2**retries)
