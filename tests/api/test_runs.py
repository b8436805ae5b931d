"""Reading runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Run, RunStatus
from tests.api.conftest import small_spec


def test_runs_of_an_experiment_in_grid_order(client: TestClient) -> None:
    experiment = client.post("/v1/experiments", json=small_spec(activations=["tanh", "relu"])).json()

    response = client.get(f"/v1/experiments/{experiment['id']}/runs")

    assert response.status_code == 200
    runs = response.json()
    assert [(run["activation"], run["activation_index"], run["seed"]) for run in runs] == [
        ("tanh", 0, 0),
        ("tanh", 0, 1),
        ("relu", 1, 0),
        ("relu", 1, 1),
    ]
    assert {run["status"] for run in runs} == {"queued"}
    assert {run["epochs_planned"] for run in runs} == {3}
    assert all(run["timings"]["enqueued_at"] is not None for run in runs)
    assert [run["id"] for run in runs] == [run["id"] for run in experiment["runs"]]


def test_a_run_shows_what_the_worker_recorded(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    run = db.scalars(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id)).order_by(Run.seed)).first()
    assert run is not None
    moment = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    run.status = RunStatus.failed
    run.attempt = 2
    run.device = "cpu"
    run.worker_host = "worker-7"
    run.init_scheme = "kaiming_normal(relu)"
    run.parameter_count = 1234
    run.activation_placement = "after_linear"
    run.training_path = "unstacked"
    run.epochs_completed = 2
    run.training_seconds = 1.5
    run.started_at = moment
    run.heartbeat_at = moment
    run.finished_at = moment
    run.error = "ValueError: bad data"
    db.commit()

    response = client.get(f"/v1/runs/{run.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["experiment_id"] == experiment_id
    assert (body["status"], body["attempt"], body["device"], body["worker_host"]) == ("failed", 2, "cpu", "worker-7")
    assert (body["init_scheme"], body["parameter_count"]) == ("kaiming_normal(relu)", 1234)
    assert (body["epochs_completed"], body["epochs_planned"]) == (2, 3)
    assert body["timings"]["started_at"] == "2025-03-01T08:30:00Z"
    assert body["timings"]["training_seconds"] == 1.5
    assert body["error"] == "ValueError: bad data"
    assert body["links"]["metrics"] == f"/v1/experiments/{experiment_id}/metrics?run_id={run.id}"


def test_unknown_and_malformed_run_ids(client: TestClient) -> None:
    missing = uuid.uuid4()
    response = client.get(f"/v1/runs/{missing}")
    assert response.status_code == 404
    assert str(missing) in response.json()["detail"]
    malformed = client.get("/v1/runs/12345")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == "path.run_id"
