"""Submitting, listing, reading and cancelling experiments over HTTP."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.dependencies import get_dispatcher
from app.experiments.service import derive_experiment_status, refresh_experiment_status
from app.models import Experiment, ExperimentStatus, Run, RunStatus
from tests.api.conftest import RecordingDispatcher, bearer, row_counts, small_spec


def _runs(db: Session, experiment_id: str) -> list[Run]:
    db.expire_all()
    return list(
        db.scalars(
            select(Run).where(Run.experiment_id == uuid.UUID(experiment_id)).order_by(Run.activation_index, Run.seed)
        )
    )


def _set_run(db: Session, run_id: uuid.UUID, **values: object) -> None:
    run = db.get(Run, run_id)
    assert run is not None
    for key, value in values.items():
        setattr(run, key, value)
    db.commit()


def test_submit_stores_experiment_and_one_run_per_arm_then_enqueues(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    submitted = small_spec(activations=["relu", "swish", {"name": "leaky_relu", "params": {"negative_slope": 0.2}}])
    response = client.post("/v1/experiments", json=submitted)

    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/experiments/{body['id']}"
    assert body["status"] == "queued"
    assert body["name"] == "tiny grid"
    assert len(body["spec_hash"]) == 64
    assert body["links"]["metrics"] == f"/v1/experiments/{body['id']}/metrics"
    assert body["links"]["report"] == f"/experiments/{body['id']}"
    assert body["links"]["plots"]["activations"] == f"/v1/experiments/{body['id']}/plots/activations.svg"
    assert client.get(body["links"]["plots"]["learning-curves"]).status_code == 200
    assert [(run["activation"], run["seed"], run["status"]) for run in body["runs"]] == [
        ("relu", 0, "queued"),
        ("relu", 1, "queued"),
        ("swish", 0, "queued"),
        ("swish", 1, "queued"),
        ("leaky_relu(negative_slope=0.2)", 0, "queued"),
        ("leaky_relu(negative_slope=0.2)", 1, "queued"),
    ]
    assert body["progress"] == {
        "finished_epochs": 0,
        "total_epochs": 18,
        "fraction": 0.0,
        "runs_total": 6,
        "runs_finished": 0,
        "runs_by_status": {"queued": 6},
    }

    experiment = db.get(Experiment, uuid.UUID(body["id"]))
    assert experiment is not None
    assert experiment.submitted_spec == submitted
    assert experiment.spec["training"]["lr"] == 0.001  # defaults filled in the canonical spec
    assert experiment.spec_hash == body["spec_hash"]
    assert experiment.total_epochs == 18
    assert experiment.queue == "cpu"
    runs = _runs(db, body["id"])
    assert [run.activation_name for run in runs] == ["relu", "relu", "silu", "silu", "leaky_relu", "leaky_relu"]
    assert {run.queue for run in runs} == {"cpu"}
    assert all(run.enqueued_at is not None for run in runs)

    # One message per run, sent only once the rows were visible to other sessions.
    assert sorted(dispatcher.run_ids) == sorted(run.id for run in runs)
    assert {queue for _ids, queue in dispatcher.enqueued} == {"cpu"}
    assert dispatcher.committed_before_enqueue == [True]


def test_cuda_experiments_go_to_the_gpu_queue(client: TestClient, dispatcher: RecordingDispatcher) -> None:
    response = client.post("/v1/experiments", json=small_spec(device="cuda"))
    assert response.status_code == 202
    assert response.json()["queue"] == "gpu"
    assert {queue for _ids, queue in dispatcher.enqueued} == {"gpu"}


def test_equal_specs_spelled_differently_share_a_hash(client: TestClient) -> None:
    first = client.post("/v1/experiments", json=small_spec()).json()
    spelled_out = small_spec(training={"epochs": 3, "lr": 0.001, "optimizer": "adam"})
    second = client.post("/v1/experiments", json=spelled_out).json()
    assert first["id"] != second["id"]
    assert first["spec_hash"] == second["spec_hash"]


def test_idempotent_retry_returns_the_same_experiment(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    headers = {"Idempotency-Key": "retry-me-1"}
    first = client.post("/v1/experiments", json=small_spec(), headers=headers)
    retry = client.post("/v1/experiments", json=small_spec(), headers=headers)

    assert first.status_code == 202
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert [run["id"] for run in retry.json()["runs"]] == [run["id"] for run in first.json()["runs"]]
    assert row_counts(db)["experiments"] == 1
    assert len(dispatcher.run_ids) == 4  # the retry enqueued nothing new

    other_key = client.post("/v1/experiments", json=small_spec(), headers={"Idempotency-Key": "retry-me-2"})
    assert other_key.status_code == 202
    assert other_key.json()["id"] != first.json()["id"]
    assert row_counts(db)["experiments"] == 2


def test_reusing_an_idempotency_key_with_another_spec_is_a_conflict(client: TestClient, db: Session) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    first = client.post("/v1/experiments", json=small_spec(), headers=headers)
    conflict = client.post("/v1/experiments", json=small_spec(seeds=[7]), headers=headers)

    assert conflict.status_code == 409
    assert "shared-key" in conflict.json()["detail"]
    assert first.json()["id"] in conflict.json()["detail"]
    assert row_counts(db) == {"experiments": 1, "runs": 4, "epoch_metrics": 0, "layer_metrics": 0}


def test_broker_failure_answers_503_and_a_keyed_retry_enqueues_the_stored_runs(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    headers = {"Idempotency-Key": "broker-was-down"}
    dispatcher.fail_with = ConnectionError("broker unreachable")
    failed = client.post("/v1/experiments", json=small_spec(), headers=headers)

    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "5"
    assert "Idempotency-Key" in failed.json()["detail"]
    stored = db.scalars(select(Experiment)).one()
    assert all(run.enqueued_at is None for run in _runs(db, str(stored.id)))

    dispatcher.fail_with = None
    retry = client.post("/v1/experiments", json=small_spec(), headers=headers)
    assert retry.status_code == 200
    assert retry.json()["id"] == str(stored.id)
    assert sorted(dispatcher.run_ids) == sorted(run.id for run in _runs(db, str(stored.id)))
    assert all(run.enqueued_at is not None for run in _runs(db, str(stored.id)))


def test_list_is_newest_first_paginated_and_filtered(client: TestClient, db: Session) -> None:
    ids = [
        client.post("/v1/experiments", json=small_spec(name=name)).json()["id"]
        for name in ("Alpha", "beta", "ALPHA two")
    ]
    # Creation times within one test can tie; make the order explicit.
    base = datetime(2025, 1, 1, tzinfo=UTC)
    for offset, experiment_id in enumerate(ids):
        experiment = db.get(Experiment, uuid.UUID(experiment_id))
        assert experiment is not None
        experiment.created_at = base + timedelta(minutes=offset)
    db.get(Experiment, uuid.UUID(ids[1])).status = ExperimentStatus.running  # type: ignore[union-attr]
    db.commit()

    first_page = client.get("/v1/experiments", params={"limit": 2}).json()
    assert [item["id"] for item in first_page["items"]] == [ids[2], ids[1]]
    assert (first_page["total"], first_page["limit"], first_page["offset"], first_page["next_offset"]) == (3, 2, 0, 2)
    second_page = client.get("/v1/experiments", params={"limit": 2, "offset": 2}).json()
    assert [item["id"] for item in second_page["items"]] == [ids[0]]
    assert second_page["next_offset"] is None
    assert first_page["items"][0]["progress"]["runs_total"] == 4

    by_name = client.get("/v1/experiments", params={"name": "alpha"}).json()
    assert [item["name"] for item in by_name["items"]] == ["ALPHA two", "Alpha"]
    assert by_name["total"] == 2
    assert client.get("/v1/experiments", params={"name": "%"}).json()["total"] == 0  # LIKE wildcards are literal

    running = client.get("/v1/experiments", params={"status": "running"}).json()
    assert [item["id"] for item in running["items"]] == [ids[1]]
    both = client.get("/v1/experiments", params=[("status", "running"), ("status", "queued")]).json()
    assert both["total"] == 3


@pytest.mark.parametrize(
    ("params", "location", "fragment"),
    [
        ({"status": "done"}, "query.status.0", "'queued', 'running', 'succeeded', 'failed', 'cancelled' or 'partial'"),
        ({"limit": 0}, "query.limit", "greater than or equal to 1"),
        ({"limit": 101}, "query.limit", "less than or equal to 100"),
        ({"offset": -1}, "query.offset", "greater than or equal to 0"),
    ],
)
def test_bad_list_parameters_get_422(
    client: TestClient, params: dict[str, object], location: str, fragment: str
) -> None:
    response = client.get("/v1/experiments", params=params)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == location
    assert fragment in error["msg"]


def test_get_experiment_shows_progress_runs_and_errors(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    started = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    _set_run(
        db,
        runs[0].id,
        status=RunStatus.succeeded,
        epochs_completed=3,
        attempt=1,
        started_at=started,
        finished_at=started + timedelta(seconds=5),
    )
    _set_run(
        db,
        runs[1].id,
        status=RunStatus.diverged,
        epochs_completed=1,
        attempt=1,
        diverged_epoch=1,
        error="loss became nan at epoch 1",
        started_at=started,
        finished_at=started + timedelta(seconds=2),
    )
    _set_run(db, runs[2].id, status=RunStatus.running, epochs_completed=2, attempt=2, started_at=started)
    refresh_experiment_status(session=db, experiment_id=uuid.UUID(experiment_id))
    db.commit()

    body = client.get(f"/v1/experiments/{experiment_id}").json()
    assert body["status"] == "running"
    assert body["started_at"] == "2025-01-01T12:00:00Z"
    assert body["finished_at"] is None
    # 3 + 1 + 2 epochs trained; the diverged run counts as settled (3) for the fraction: (3 + 3 + 2) / 12.
    assert body["progress"]["finished_epochs"] == 6
    assert body["progress"]["total_epochs"] == 12
    assert body["progress"]["fraction"] == pytest.approx(8 / 12, abs=1e-4)
    assert body["progress"]["runs_finished"] == 2
    assert [run["status"] for run in body["runs"]] == ["succeeded", "diverged", "running", "queued"]
    assert body["runs"][1]["error"] == "loss became nan at epoch 1"
    assert body["runs"][2]["attempt"] == 2
    assert "1 diverged" in body["error"]
    assert body["spec"]["training"]["epochs"] == 3

    _set_run(db, runs[2].id, status=RunStatus.succeeded, epochs_completed=3, finished_at=started + timedelta(seconds=9))
    _set_run(
        db,
        runs[3].id,
        status=RunStatus.succeeded,
        epochs_completed=3,
        started_at=started,
        finished_at=started + timedelta(seconds=7),
    )
    refresh_experiment_status(session=db, experiment_id=uuid.UUID(experiment_id))
    db.commit()
    finished = client.get(f"/v1/experiments/{experiment_id}").json()
    assert finished["status"] == "partial"
    assert finished["finished_at"] == "2025-01-01T12:00:09Z"
    assert finished["progress"]["fraction"] == 1.0


def test_unknown_and_malformed_experiment_ids(client: TestClient) -> None:
    missing = uuid.uuid4()
    for path in ("", "/runs", "/metrics", "/layer-metrics"):
        response = client.get(f"/v1/experiments/{missing}{path}")
        assert response.status_code == 404, path
        assert str(missing) in response.json()["detail"]
    assert client.post(f"/v1/experiments/{missing}/cancel").status_code == 404

    malformed = client.get("/v1/experiments/not-a-uuid")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == "path.experiment_id"


def test_cancel_of_a_queued_experiment_cancels_every_run(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]

    response = client.post(f"/v1/experiments/{experiment_id}/cancel")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["cancel_requested_at"] is not None
    assert body["finished_at"] is not None
    assert {run["status"] for run in body["runs"]} == {"cancelled"}
    assert all(run.finished_at is not None for run in _runs(db, experiment_id))

    again = client.post(f"/v1/experiments/{experiment_id}/cancel")
    assert again.status_code == 200
    assert again.json()["cancel_requested_at"] == body["cancel_requested_at"]


def test_cancel_while_a_run_trains_waits_for_it(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    _set_run(db, runs[0].id, status=RunStatus.succeeded, epochs_completed=3, finished_at=datetime.now(UTC))
    _set_run(db, runs[1].id, status=RunStatus.running, epochs_completed=1, started_at=datetime.now(UTC))

    body = client.post(f"/v1/experiments/{experiment_id}/cancel").json()
    assert body["status"] == "running"
    assert [run["status"] for run in body["runs"]] == ["succeeded", "running", "cancelled", "cancelled"]

    # The worker stops the running run at its epoch boundary and refreshes the experiment.
    _set_run(db, runs[1].id, status=RunStatus.cancelled, epochs_completed=2, finished_at=datetime.now(UTC))
    refresh_experiment_status(session=db, experiment_id=uuid.UUID(experiment_id))
    db.commit()
    assert client.get(f"/v1/experiments/{experiment_id}").json()["status"] == "cancelled"


def test_cancel_of_a_finished_experiment_is_a_conflict(client: TestClient, db: Session) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    for run in _runs(db, experiment_id):
        _set_run(db, run.id, status=RunStatus.succeeded, epochs_completed=3, finished_at=datetime.now(UTC))
    refresh_experiment_status(session=db, experiment_id=uuid.UUID(experiment_id))
    db.commit()

    response = client.post(f"/v1/experiments/{experiment_id}/cancel")
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]
    assert client.get(f"/v1/experiments/{experiment_id}").json()["cancel_requested_at"] is None


@pytest.mark.parametrize(
    ("statuses", "cancel_requested", "expected"),
    [
        ([], False, ExperimentStatus.queued),
        (["queued", "queued"], False, ExperimentStatus.queued),
        (["queued", "running"], False, ExperimentStatus.running),
        (["succeeded", "queued"], False, ExperimentStatus.running),
        (["succeeded", "running"], True, ExperimentStatus.running),
        (["succeeded", "succeeded"], False, ExperimentStatus.succeeded),
        (["succeeded", "succeeded"], True, ExperimentStatus.succeeded),
        (["succeeded", "cancelled"], True, ExperimentStatus.cancelled),
        (["cancelled", "cancelled"], True, ExperimentStatus.cancelled),
        (["failed", "diverged", "timed_out"], False, ExperimentStatus.failed),
        (["succeeded", "diverged"], False, ExperimentStatus.partial),
        (["succeeded", "failed", "timed_out"], False, ExperimentStatus.partial),
    ],
)
def test_experiment_status_follows_its_runs(
    statuses: list[str], cancel_requested: bool, expected: ExperimentStatus
) -> None:
    assert derive_experiment_status(run_statuses=statuses, cancel_requested=cancel_requested) == expected


def test_real_dispatcher_writes_one_message_per_run_to_the_embedded_broker(
    app: FastAPI, settings: Settings, admin_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import Celery

    from worker import celery_app as celery_module

    # A Celery app of its own on the test's broker folder, so the process-wide one is left alone.
    isolated = Celery("actlab-test")
    celery_module.configure(isolated, settings)
    monkeypatch.setattr(celery_module, "celery_app", isolated)
    app.dependency_overrides.pop(get_dispatcher)

    with TestClient(app, headers=bearer(admin_key)) as client:
        response = client.post("/v1/experiments", json=small_spec(device="auto"))

    assert response.status_code == 202
    assert response.json()["queue"] == "cpu"  # no GPU worker has reported in
    messages = [json.loads(path.read_text()) for path in (tmp_path / "broker").rglob("*.msg")]
    assert len(messages) == 4
    assert {message["headers"]["task"] for message in messages} == {"actlab.train_runs"}
    assert {message["properties"]["delivery_info"]["routing_key"] for message in messages} == {"cpu"}
    # Each message carries exactly one run id and nothing else of the experiment.
    sent = [json.loads(base64.b64decode(message["body"]))[1] for message in messages]
    assert all(list(kwargs) == ["run_ids"] and len(kwargs["run_ids"]) == 1 for kwargs in sent)
    assert sorted(kwargs["run_ids"][0] for kwargs in sent) == sorted(run["id"] for run in response.json()["runs"])
