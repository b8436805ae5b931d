"""A grid through the real API and a real Celery worker on Redis and PostgreSQL, trained as one stack.

The worker (one process) claims every run of the experiment with the first task and trains them
stacked; the tasks of the other runs find their runs taken and end at once.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import make_engine
from app.models import EpochMetric
from app.spec import ExperimentSpec
from tests.integration.conftest import (
    VISIBILITY_TIMEOUT,
    ManagedProcess,
    Stack,
    spirals_spec,
    wait_for_experiment,
    wait_until,
)

pytestmark = pytest.mark.integration

ACTIVATIONS: list[Any] = ["relu", "tanh"]
SEEDS = [0, 1, 2]


def _runs_in_detail(api: httpx.Client, experiment: dict[str, Any]) -> list[dict[str, Any]]:
    return [api.get(f"/v1/runs/{run['id']}").json() for run in experiment["runs"]]


def _rows_by_run(api: httpx.Client, experiment_id: str) -> dict[str, list[dict[str, Any]]]:
    rows = api.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "json"}).json()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row)
    return {run_id: sorted(items, key=lambda row: row["epoch"]) for run_id, items in by_run.items()}


def test_a_grid_is_trained_stacked_with_the_numbers_of_ordinary_runs(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    from worker.training.trainer import train_arm

    spec = spirals_spec(name="stacked grid", epochs=3, activations=ACTIVATIONS, seeds=SEEDS)
    response = api.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    experiment = wait_for_experiment(api, response.json()["id"], timeout=180)
    assert experiment["status"] == "succeeded", experiment
    runs = _runs_in_detail(api, experiment)
    assert len(runs) == 6
    assert {(run["status"], run["training_path"], run["attempt"], run["epochs_completed"]) for run in runs} == {
        ("succeeded", "stacked", 1, 3)
    }
    rows = _rows_by_run(api, experiment["id"])
    # Exactly one row per (run, epoch).
    assert {run_id: [row["epoch"] for row in items] for run_id, items in rows.items()} == {
        run["id"]: [0, 1, 2, 3] for run in runs
    }
    parsed = ExperimentSpec.model_validate(spec)
    for run in runs:
        reference = train_arm(parsed, activation_index=run["activation_index"], seed=run["seed"], device="cpu")
        for row, report in zip(rows[run["id"]], reference.reports, strict=True):
            # The engine's stated tolerance between stacked and ordinary training (tests/training/test_stacked.py).
            assert row["train_loss"] == pytest.approx(report.train_loss, rel=1e-4, abs=1e-6)
            assert row["test_loss"] == pytest.approx(report.test_loss, rel=1e-4, abs=1e-6)
            assert row["test_accuracy"] == pytest.approx(report.test_accuracy, abs=1e-6)


def test_cancel_of_a_running_stack_stops_every_run_at_one_epoch_boundary(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = spirals_spec(
        name="stacked cancel", epochs=40, samples=8000, hidden=[64, 64], activations=ACTIVATIONS, seeds=SEEDS
    )
    experiment_id = api.post("/v1/experiments", json=spec).json()["id"]

    def training() -> bool:
        runs = api.get(f"/v1/experiments/{experiment_id}").json()["runs"]
        return all(run["status"] == "running" and run["epochs_completed"] >= 1 for run in runs)

    wait_until(training, timeout=120, interval=0.1, what="the stack to finish its first epoch")
    response = api.post(f"/v1/experiments/{experiment_id}/cancel")
    assert response.status_code == 200, response.text
    experiment = wait_for_experiment(api, experiment_id, timeout=90)
    assert experiment["status"] == "cancelled"
    finished = {run["epochs_completed"] for run in experiment["runs"]}
    assert {run["status"] for run in experiment["runs"]} == {"cancelled"}
    assert len(finished) == 1 and 1 <= min(finished) < 40
    rows = _rows_by_run(api, experiment_id)
    epochs = min(finished)
    assert {run_id: [row["epoch"] for row in items] for run_id, items in rows.items()} == {
        run["id"]: list(range(0, epochs + 1)) for run in experiment["runs"]
    }


def test_a_diverging_member_ends_diverged_while_the_others_succeed(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    blowup = {"name": "custom", "expression": "x * exp(x * 100)", "label": "blowup"}
    spec = spirals_spec(name="stacked divergence", epochs=3, activations=["relu", blowup], seeds=SEEDS)
    experiment = wait_for_experiment(api, api.post("/v1/experiments", json=spec).json()["id"], timeout=180)
    assert experiment["status"] == "partial", experiment
    runs = _runs_in_detail(api, experiment)
    by_label = {(run["activation"], run["seed"]): run for run in runs}
    for seed in SEEDS:
        relu, diverged = by_label[("relu", seed)], by_label[("blowup", seed)]
        assert (relu["status"], relu["epochs_completed"], relu["training_path"]) == ("succeeded", 3, "stacked")
        assert (diverged["status"], diverged["diverged_epoch"], diverged["training_path"]) == ("diverged", 1, "stacked")
    rows = _rows_by_run(api, experiment["id"])
    # Epoch 0 (the network at initialisation) for every run, then its trained epochs: 1-3, or 1 where it diverged.
    assert {run["id"]: [row["epoch"] for row in rows[run["id"]]] for run in runs} == {
        run["id"]: ([0, 1, 2, 3] if run["status"] == "succeeded" else [0, 1]) for run in runs
    }


def test_a_stack_survives_its_worker_being_killed_and_resumes_every_run(
    api: httpx.Client, stack: Stack, cpu_worker: ManagedProcess
) -> None:
    epochs = 20
    spec = spirals_spec(
        name="stacked worker killed", epochs=epochs, samples=6000, hidden=[64, 64], activations=ACTIVATIONS, seeds=SEEDS
    )
    experiment_id = api.post("/v1/experiments", json=spec).json()["id"]

    def mid_run() -> bool:
        runs = api.get(f"/v1/experiments/{experiment_id}").json()["runs"]
        return all(run["status"] == "running" and run["epochs_completed"] >= 2 for run in runs)

    wait_until(mid_run, timeout=120, interval=0.05, what="the stack to be past its second epoch")
    cpu_worker.kill()
    killed_after = min(run["epochs_completed"] for run in api.get(f"/v1/experiments/{experiment_id}").json()["runs"])
    assert killed_after < epochs

    # The new worker skips the tasks of the runs the stack holds (fresh heartbeats under the lost task); the lost
    # task comes back after the visibility timeout and takes the whole stack back from its checkpoints.
    stack.ensure_worker("cpu")
    experiment = wait_for_experiment(api, experiment_id, timeout=VISIBILITY_TIMEOUT + 120)
    assert experiment["status"] == "succeeded", experiment
    runs = experiment["runs"]
    assert all(run["epochs_completed"] == epochs and run["attempt"] >= 2 for run in runs)
    rows = _rows_by_run(api, experiment_id)
    assert all([row["epoch"] for row in rows[run["id"]]] == list(range(0, epochs + 1)) for run in runs)
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            for run in runs:
                attempts = dict(
                    connection.execute(
                        select(EpochMetric.epoch, EpochMetric.attempt).where(EpochMetric.run_id == uuid.UUID(run["id"]))
                    ).all()
                )
                # Resumed from the checkpoint: the epochs before the kill keep the first attempt's rows.
                assert all(attempts[epoch] == 1 for epoch in range(1, killed_after))
    finally:
        engine.dispose()
