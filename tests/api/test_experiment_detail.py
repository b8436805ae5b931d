"""GET /v1/experiments/{id} is encoded once from lean rows (app.experiments.detail): its content is the
ExperimentDetail the response model describes, field for field and in order, for every shape of experiment."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.experiments import follow_up, service
from app.experiments.router import experiment_detail
from app.experiments.schemas import ExperimentDetail
from app.models import RunStatus
from tests.api.conftest import bearer, make_key, small_spec
from tests.api.test_retry import _runs, _train


def _through_the_model(db: Session, experiment_id: str) -> dict[str, Any]:
    """The status response built the way every other endpoint builds it: ORM rows, the model, its JSON."""
    db.expire_all()
    experiment, runs = service.experiment_with_runs(session=db, experiment_id=uuid.UUID(experiment_id))
    extensions = follow_up.seed_extensions_of(session=db, experiment_id=uuid.UUID(experiment_id))
    return json.loads(experiment_detail(experiment, runs, extensions).model_dump_json())


def _same_as_the_model(client: TestClient, db: Session, experiment_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/experiments/{experiment_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected = _through_the_model(db, experiment_id)
    assert body == expected
    assert list(body) == list(expected) == list(ExperimentDetail.model_fields)
    assert [list(run) for run in body["runs"]] == [list(run) for run in expected["runs"]]
    ExperimentDetail.model_validate(body)
    return body


def test_a_queued_experiment(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec(name='queued — ünïcode "quoted" spec')).json()["id"]
    body = _same_as_the_model(client, db, experiment_id)
    assert body["status"] == "queued"
    assert body["spec"]["name"] == 'queued — ünïcode "quoted" spec'
    assert body["started_at"] is None and body["seed_extensions"] == []


def test_a_finished_experiment_with_failures_and_new_seeds(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    for key, run in _runs(db, experiment_id).items():
        end = RunStatus.failed if key == ("tanh", 1) else RunStatus.succeeded
        _train(db, run.id, range(1, 4), end=end, error="RuntimeError: boom" if end == RunStatus.failed else None)
    _same_as_the_model(client, db, experiment_id)
    assert client.post(f"/v1/experiments/{experiment_id}/seeds", json={"seeds": [7]}).status_code == 202
    assert client.post(f"/v1/experiments/{experiment_id}/seeds", json={"seeds": [8, 9]}).status_code == 202
    body = _same_as_the_model(client, db, experiment_id)
    assert [extension["seeds"] for extension in body["seed_extensions"]] == [[7], [8, 9]]
    assert body["progress"]["runs_by_status"] == {"succeeded": 3, "failed": 1, "queued": 6}
    assert body["error"] is not None and body["finished_at"] is None


def test_a_factorial_experiment_with_cells(client: TestClient, db: Session) -> None:
    spec = small_spec(version=2, factors={"model.hidden": [[8], [16]]})
    spec.pop("model")
    spec["model"] = {"kind": "mlp"}
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    body = _same_as_the_model(client, db, response.json()["id"])
    assert {run["cell"] for run in body["runs"]} == {"hidden=8", "hidden=16"}
    assert all(run["cell_levels"] is not None for run in body["runs"])


def test_another_owners_experiment_and_an_unknown_id_are_not_found(app: FastAPI, client: TestClient) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    other = bearer(make_key(app, name="someone else"))
    assert client.get(f"/v1/experiments/{experiment_id}", headers=other).status_code == 404
    assert client.get(f"/v1/experiments/{experiment_id}").status_code == 200
    assert client.get(f"/v1/experiments/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/experiments/not-a-uuid").status_code == 422
