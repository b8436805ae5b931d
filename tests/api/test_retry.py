"""POST /v1/experiments/{id}/retry: failed and timed-out runs go back to the queue; every other end stays."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.dependencies import get_dispatcher
from app.experiments.service import refresh_experiment_status
from app.main import create_app
from app.metrics.write_repository import upsert_epoch_metrics
from app.models import EpochMetric, Run, RunStatus
from app.runs.state_repository import claim_run, finish_run
from tests.api.conftest import RecordingDispatcher, bearer, make_key, row_counts, small_spec
from worker.training.reports import EpochReport


def _report(epoch: int, accuracy: float) -> EpochReport:
    return EpochReport(
        epoch=epoch,
        train_loss=1.0 / epoch,
        train_accuracy=accuracy,
        test_loss=1.0 / epoch,
        test_accuracy=accuracy,
        epoch_seconds=0.1,
        samples_per_second=1000.0,
        lr=0.001,
    )


def _train(db: Session, run_id: uuid.UUID, epochs: range, *, end: RunStatus | None, error: str | None = None) -> int:
    """What a worker does: claim the run, write the epochs, record how it ended; returns the attempt."""
    db.expire_all()  # a worker reads the rows afresh
    claimed = claim_run(session=db, run_id=run_id, worker_host="test", task_id=None, stale_after=timedelta(hours=1))
    assert claimed is not None
    for epoch in epochs:
        upsert_epoch_metrics(session=db, run_id=run_id, attempt=claimed.attempt, report=_report(epoch, 0.5))
    if end is not None:
        finish_run(
            session=db,
            run_id=run_id,
            attempt=claimed.attempt,
            status=end,
            epochs_completed=epochs.stop - 1 if epochs else claimed.epochs_completed,
            error=error,
        )
    refresh_experiment_status(session=db, experiment_id=claimed.experiment_id)
    db.commit()
    return claimed.attempt


def _runs(db: Session, experiment_id: str) -> dict[tuple[str, int], Run]:
    db.expire_all()
    runs = db.scalars(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id)))
    return {(run.activation_label, run.seed): run for run in runs}


def _epochs(db: Session, run_id: uuid.UUID) -> list[tuple[int, int]]:
    db.expire_all()
    rows = db.execute(
        select(EpochMetric.epoch, EpochMetric.attempt).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
    )
    return [(int(epoch), int(attempt)) for epoch, attempt in rows]


def _ended_grid(client: TestClient, db: Session) -> tuple[str, dict[tuple[str, int], Run]]:
    """A 2 x 2 grid that ended with one run of each kind: succeeded, failed, diverged, timed out."""
    experiment_id: str = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    _train(db, runs["relu", 0].id, range(1, 4), end=RunStatus.succeeded)
    _train(db, runs["relu", 1].id, range(1, 3), end=RunStatus.failed, error="RuntimeError: CUDA out of memory")
    _train(db, runs["tanh", 0].id, range(1, 2), end=RunStatus.diverged)
    _train(db, runs["tanh", 1].id, range(1, 2), end=RunStatus.timed_out, error="stopped by the time limit")
    return experiment_id, _runs(db, experiment_id)


def test_retry_requeues_the_failed_and_timed_out_runs_only(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    experiment_id, runs = _ended_grid(client, db)
    assert client.get(f"/v1/experiments/{experiment_id}").json()["status"] == "partial"

    response = client.post(f"/v1/experiments/{experiment_id}/retry")

    assert response.status_code == 202, response.text
    body = response.json()
    assert [(run["activation"], run["seed"], run["status"]) for run in body["runs"]] == [
        ("relu", 1, "queued"),
        ("tanh", 1, "queued"),
    ]
    # The epochs trained are kept (the worker resumes), and so is the attempt counter that fences old writers.
    assert [(run["epochs_completed"], run["attempt"], run["error"]) for run in body["runs"]] == [
        (2, 1, None),
        (1, 1, None),
    ]
    assert dispatcher.enqueued[-1] == ([runs["relu", 1].id, runs["tanh", 1].id], "cpu")
    assert dispatcher.committed_before_enqueue[-1] is True
    assert body["experiment"]["status"] == "running" and body["experiment"]["finished_at"] is None

    detail = client.get(f"/v1/experiments/{experiment_id}").json()
    statuses = {(run["activation"], run["seed"]): run["status"] for run in detail["runs"]}
    assert statuses == {("relu", 0): "succeeded", ("relu", 1): "queued", ("tanh", 0): "diverged", ("tanh", 1): "queued"}

    # A worker resumes the failed run from its checkpoint after epoch 1: epoch 2 is trained again.
    assert _train(db, runs["relu", 1].id, range(2, 4), end=RunStatus.succeeded) == 2
    _train(db, runs["tanh", 1].id, range(2, 4), end=RunStatus.succeeded)
    assert _epochs(db, runs["relu", 1].id) == [(1, 1), (2, 2), (3, 2)]  # one row per epoch, none repeated
    rows = client.get(f"/v1/experiments/{experiment_id}/metrics").json()
    keys = [(row["run_id"], row["epoch"]) for row in rows]
    assert len(keys) == len(set(keys)) == 3 + 3 + 1 + 3
    finished = client.get(f"/v1/experiments/{experiment_id}").json()
    # The diverged run is a result: the experiment ends partial, with the divergence as its only error.
    assert finished["status"] == "partial" and finished["finished_at"] is not None
    assert finished["error"].startswith("1 diverged")


def test_nothing_to_retry_is_a_conflict(client: TestClient, db: Session, dispatcher: RecordingDispatcher) -> None:
    experiment_id: str = client.post("/v1/experiments", json=small_spec(seeds=[0])).json()["id"]
    runs = _runs(db, experiment_id)
    _train(db, runs["relu", 0].id, range(1, 4), end=RunStatus.succeeded)
    _train(db, runs["tanh", 0].id, range(1, 2), end=RunStatus.diverged)
    sent = len(dispatcher.enqueued)

    response = client.post(f"/v1/experiments/{experiment_id}/retry")

    assert response.status_code == 409
    assert "no failed or timed-out run" in response.json()["detail"]
    assert "diverged runs are results" in response.json()["detail"]
    assert len(dispatcher.enqueued) == sent
    assert client.get(f"/v1/experiments/{experiment_id}").json()["status"] == "partial"


def test_a_run_that_used_every_attempt_is_not_retried(client: TestClient, db: Session, settings: Settings) -> None:
    experiment_id: str = client.post("/v1/experiments", json=small_spec(seeds=[0], activations=["relu"])).json()["id"]
    (run,) = _runs(db, experiment_id).values()
    db.execute(update(Run).where(Run.id == run.id).values(attempt=settings.task_max_retries))
    db.commit()
    _train(db, run.id, range(1, 2), end=RunStatus.failed, error="gave up")

    response = client.post(f"/v1/experiments/{experiment_id}/retry")

    assert response.status_code == 409
    assert f"already used all {settings.task_max_retries + 1} attempts" in response.json()["detail"]
    assert "ACTLAB_TASK_MAX_RETRIES" in response.json()["detail"]


def test_a_cancelled_experiment_is_not_retried(client: TestClient, db: Session) -> None:
    experiment_id: str = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    _train(db, runs["relu", 0].id, range(1, 3), end=RunStatus.failed, error="boom")
    assert client.post(f"/v1/experiments/{experiment_id}/cancel").status_code == 200
    before = row_counts(db)

    response = client.post(f"/v1/experiments/{experiment_id}/retry")

    assert response.status_code == 409 and "cancelled" in response.json()["detail"]
    assert row_counts(db) == before
    assert _runs(db, experiment_id)["relu", 0].status == RunStatus.failed


def test_another_owners_experiment_is_not_found(app: FastAPI, db: Session) -> None:
    owner, stranger = make_key(app, name="owner"), make_key(app, name="stranger")
    with TestClient(app) as client:
        experiment_id = client.post("/v1/experiments", json=small_spec(), headers=bearer(owner)).json()["id"]
        runs = _runs(db, experiment_id)
        _train(db, runs["relu", 0].id, range(1, 2), end=RunStatus.failed, error="boom")
        refused = client.post(f"/v1/experiments/{experiment_id}/retry", headers=bearer(stranger))
        assert refused.status_code == 404
        assert _runs(db, experiment_id)["relu", 0].status == RunStatus.failed
        assert client.post(f"/v1/experiments/{experiment_id}/retry", headers=bearer(owner)).status_code == 202


def test_requeued_runs_count_against_the_active_arms_quota_but_a_retry_is_no_submission(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_active_arms_per_owner": 4, "max_submissions_per_minute": 2}))
    app.dependency_overrides[get_dispatcher] = RecordingDispatcher
    key = make_key(app, name="owner")
    with TestClient(app, headers=bearer(key)) as client, app.state.session_factory() as db:
        experiment_id = client.post("/v1/experiments", json=small_spec(seeds=[0])).json()["id"]
        runs = _runs(db, experiment_id)
        _train(db, runs["relu", 0].id, range(1, 2), end=RunStatus.failed, error="boom")
        _train(db, runs["tanh", 0].id, range(1, 2), end=RunStatus.failed, error="boom")
        # Three queued arms of other work: the two requeued ones would make 5, over the cap of 4.
        busy = client.post("/v1/experiments", json=small_spec(seeds=[0, 1, 2], activations=["relu"]))
        assert busy.status_code == 202, busy.text
        refused = client.post(f"/v1/experiments/{experiment_id}/retry")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "this retry has 2 arms" in refused.json()["detail"]
        assert {run.status for run in _runs(db, experiment_id).values()} == {RunStatus.failed}
        # Two submissions used the per-minute cap; the retry is not one, so it passes once arms are free.
        assert client.post(f"/v1/experiments/{busy.json()['id']}/cancel").status_code == 200
        assert client.post(f"/v1/experiments/{experiment_id}/retry").status_code == 202
        assert client.post("/v1/experiments", json=small_spec()).status_code == 429
