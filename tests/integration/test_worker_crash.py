"""A worker SIGKILLed in the middle of a run: the task is redelivered, the run resumes and completes
with exactly one metric row per epoch, and its attempt count shows the retry."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select

from app.db import make_engine
from app.models import EpochMetric
from tests.integration.conftest import (
    VISIBILITY_TIMEOUT,
    ManagedProcess,
    Stack,
    spirals_spec,
    wait_for_experiment,
    wait_until,
)
from tests.integration.lanes import stored_metrics, uninterrupted_metrics

pytestmark = pytest.mark.integration

EPOCHS = 20


def test_a_run_survives_its_worker_being_killed_mid_run(
    api: httpx.Client, stack: Stack, cpu_worker: ManagedProcess
) -> None:
    spec = spirals_spec(name="worker killed", epochs=EPOCHS, samples=12000, hidden=[64, 64])
    experiment_id = api.post("/v1/experiments", json=spec).json()["id"]

    def mid_run() -> bool:
        run = api.get(f"/v1/experiments/{experiment_id}").json()["runs"][0]
        assert run["status"] in ("queued", "running"), run
        return run["status"] == "running" and run["epochs_completed"] >= 2

    wait_until(mid_run, timeout=90, interval=0.05, what="the run to be past its second epoch")
    # SIGKILL to the worker's whole process group: the main process and the pool child training the run.
    cpu_worker.kill()
    run = api.get(f"/v1/experiments/{experiment_id}").json()["runs"][0]
    assert run["status"] == "running" and 2 <= run["epochs_completed"] < EPOCHS
    killed_after = run["epochs_completed"]

    # A new worker gets the unacknowledged task again once the visibility timeout has passed.
    stack.ensure_worker("cpu")
    experiment = wait_for_experiment(api, experiment_id, timeout=VISIBILITY_TIMEOUT + 90)
    assert experiment["status"] == "succeeded", experiment
    run = experiment["runs"][0]
    assert run["epochs_completed"] == EPOCHS
    assert run["attempt"] >= 2
    rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert [row["epoch"] for row in rows] == list(range(0, EPOCHS + 1))
    # The same numbers as the arm trained without interruption.
    assert stored_metrics(rows) == uninterrupted_metrics(spec)

    # It resumed from its checkpoint: the epochs before the kill keep the first attempt's rows.
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            attempts = dict(
                connection.execute(
                    select(EpochMetric.epoch, EpochMetric.attempt).where(EpochMetric.run_id == uuid.UUID(run["id"]))
                ).all()
            )
    finally:
        engine.dispose()
    assert all(attempts[epoch] == 1 for epoch in range(1, killed_after))
    assert all(attempts[epoch] >= 2 for epoch in range(killed_after + 1, EPOCHS + 1))
