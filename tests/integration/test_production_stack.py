"""The production stack for real: API (uvicorn) + Celery worker processes + Redis + PostgreSQL."""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import make_engine
from app.models import WorkerNode
from tests.integration.conftest import ManagedProcess, Stack, spirals_spec, wait_for_experiment, wait_until

pytestmark = pytest.mark.integration


def _digits_spec() -> dict[str, Any]:
    return {
        "name": "integration digits",
        "dataset": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [32]},
        "activations": ["relu", "tanh"],
        "seeds": [0, 1],
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.01},
        "device": "cpu",
    }


def _queue_length(redis_client: Any, stack: Stack, queue: str) -> int:
    return int(redis_client.llen(f"{stack.key_prefix}{queue}"))


def test_a_submitted_experiment_is_trained_by_a_worker_and_its_metrics_are_served(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    response = api.post("/v1/experiments", json=_digits_spec())
    assert response.status_code == 202, response.text
    submitted = response.json()
    assert submitted["queue"] == "cpu" and len(submitted["runs"]) == 4

    experiment = wait_for_experiment(api, submitted["id"], timeout=180)
    assert experiment["status"] == "succeeded", experiment
    assert experiment["progress"]["finished_epochs"] == experiment["progress"]["total_epochs"] == 12
    for run in experiment["runs"]:
        assert (run["status"], run["attempt"], run["epochs_completed"]) == ("succeeded", 1, 3)
        details = api.get(f"/v1/runs/{run['id']}").json()
        assert details["device"] == "cpu"
        assert details["worker_host"].startswith("actlab-cpu@")
        assert details["parameter_count"] > 0

    rows = api.get(f"/v1/experiments/{submitted['id']}/metrics", params={"format": "json"}).json()
    # 4 runs x (epoch 0 at initialisation + 3 trained epochs).
    assert len(rows) == 16
    assert len({(row["run_id"], row["epoch"]) for row in rows}) == 16
    assert {row["epoch"] for row in rows} == {0, 1, 2, 3}
    assert all(0.0 <= row["test_accuracy"] <= 1.0 and row["train_loss"] > 0 for row in rows)
    final = [row["test_accuracy"] for row in rows if row["epoch"] == 3]
    # Ten classes: chance is 10%; three epochs of a small MLP on digits reach far above it.
    assert statistics.fmean(final) > 0.5

    text = api.get(f"/v1/experiments/{submitted['id']}/metrics", params={"format": "csv"}).text
    assert len(list(csv.DictReader(io.StringIO(text)))) == 16
    layer_rows = api.get(f"/v1/experiments/{submitted['id']}/layer-metrics").json()
    assert {(row["run_id"], row["epoch"]) for row in layer_rows} == {(row["run_id"], row["epoch"]) for row in rows}


def test_a_ready_worker_records_its_queues_and_device_so_auto_routes_to_cpu_without_a_gpu(
    api: httpx.Client, stack: Stack, cpu_worker: ManagedProcess
) -> None:
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            nodes = connection.execute(select(WorkerNode.hostname, WorkerNode.queues, WorkerNode.device)).all()
    finally:
        engine.dispose()
    assert any(hostname.startswith("actlab-cpu@") and queues == ["cpu"] for hostname, queues, _ in nodes), nodes
    spec = spirals_spec(name="auto device", epochs=1, device="auto")
    submitted = api.post("/v1/experiments", json=spec).json()
    assert submitted["queue"] == "cpu"
    assert wait_for_experiment(api, submitted["id"], timeout=120)["status"] == "succeeded"


def test_cancel_of_a_running_experiment_stops_at_an_epoch_boundary_and_keeps_finished_epochs(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = spirals_spec(name="cancel while running", epochs=40, samples=8000, hidden=[64, 64])
    experiment_id = api.post("/v1/experiments", json=spec).json()["id"]

    def training() -> bool:
        run = api.get(f"/v1/experiments/{experiment_id}").json()["runs"][0]
        return run["status"] == "running" and run["epochs_completed"] >= 1

    wait_until(training, timeout=90, interval=0.1, what="the run to finish its first epoch")
    response = api.post(f"/v1/experiments/{experiment_id}/cancel")
    assert response.status_code == 200, response.text

    experiment = wait_for_experiment(api, experiment_id, timeout=60)
    assert experiment["status"] == "cancelled"
    run = experiment["runs"][0]
    assert run["status"] == "cancelled"
    assert 1 <= run["epochs_completed"] < 40
    rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert [row["epoch"] for row in rows] == list(range(0, run["epochs_completed"] + 1))


def test_cancel_of_a_queued_experiment_means_its_runs_never_start(
    api: httpx.Client, stack: Stack, redis_client: Any
) -> None:
    # No worker consumes the gpu queue yet, so these runs stay queued.
    spec = spirals_spec(name="cancel while queued", epochs=2, activations=["relu", "tanh"], device="cuda")
    submitted = api.post("/v1/experiments", json=spec).json()
    assert submitted["queue"] == "gpu"
    assert _queue_length(redis_client, stack, "gpu") >= 2

    cancelled = api.post(f"/v1/experiments/{submitted['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert {run["status"] for run in cancelled["runs"]} == {"cancelled"}

    # A gpu worker that arrives later takes the messages and leaves the runs alone.
    gpu_worker = stack.start_worker("gpu")
    try:
        wait_until(lambda: _queue_length(redis_client, stack, "gpu") == 0, timeout=60, what="the gpu queue to drain")
    finally:
        gpu_worker.stop()
    experiment = api.get(f"/v1/experiments/{submitted['id']}").json()
    assert experiment["status"] == "cancelled"
    assert [(run["status"], run["attempt"], run["epochs_completed"]) for run in experiment["runs"]] == [
        ("cancelled", 0, 0),
        ("cancelled", 0, 0),
    ]
    assert api.get(f"/v1/experiments/{submitted['id']}/metrics").json() == []


def test_a_retried_post_with_the_same_idempotency_key_returns_the_same_experiment(
    api: httpx.Client, stack: Stack, redis_client: Any
) -> None:
    spec = spirals_spec(name="idempotent retry", epochs=2, seeds=[0, 1], device="cuda")
    before = _queue_length(redis_client, stack, "gpu")
    headers = {"Idempotency-Key": "integration-retry-1"}
    first = api.post("/v1/experiments", json=spec, headers=headers)
    second = api.post("/v1/experiments", json=spec, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert [run["id"] for run in first.json()["runs"]] == [run["id"] for run in second.json()["runs"]]
    # One message per run, not two.
    assert _queue_length(redis_client, stack, "gpu") == before + 2
    listed = api.get("/v1/experiments", params={"name": "idempotent retry"}).json()
    matching = [item for item in listed["items"] if item["name"] == "idempotent retry"]
    assert len(matching) == 1
    api.post(f"/v1/experiments/{first.json()['id']}/cancel")
