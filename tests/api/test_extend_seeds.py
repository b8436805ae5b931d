"""POST /v1/experiments/{id}/seeds: more seeds for an experiment, seed-paired with its runs, without resubmitting."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.dependencies import get_dispatcher
from app.experiments.service import refresh_experiment_status
from app.main import create_app
from app.models import EpochMetric, Run, RunStatus
from tests.api.conftest import RecordingDispatcher, bearer, make_key, row_counts, small_spec


def _submit(client: TestClient, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/experiments", json=small_spec(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def _finish_runs(db: Session, experiment_id: str, *, status: RunStatus = RunStatus.succeeded) -> None:
    """End every unfinished run as a worker would, three epochs each with one metric row per epoch."""
    identifier = uuid.UUID(experiment_id)
    db.expire_all()
    for run in db.scalars(select(Run).where(Run.experiment_id == identifier, Run.status == RunStatus.queued)):
        run.status, run.epochs_completed, run.attempt = status, 3, 1
        for epoch in (1, 2, 3):
            db.add(
                EpochMetric(
                    run_id=run.id,
                    epoch=epoch,
                    attempt=1,
                    train_loss=1.0 / epoch,
                    train_accuracy=0.5,
                    test_loss=1.0 / epoch,
                    test_accuracy=0.5 + 0.01 * run.seed,
                    epoch_seconds=0.1,
                    samples_per_second=1000.0,
                    lr=0.001,
                )
            )
    refresh_experiment_status(session=db, experiment_id=identifier)
    db.commit()


def test_new_seeds_add_one_queued_run_per_activation_paired_with_the_old_ones(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    experiment = _submit(client)
    _finish_runs(db, experiment["id"])
    assert client.get(f"/v1/experiments/{experiment['id']}").json()["status"] == "succeeded"

    response = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [3, 4]})

    assert response.status_code == 202, response.text
    added = response.json()
    assert response.headers["Location"] == f"/v1/experiments/{experiment['id']}"
    assert added["experiment_id"] == experiment["id"] and added["seeds"] == [3, 4]
    assert [(run["activation"], run["seed"], run["status"]) for run in added["runs"]] == [
        ("relu", 3, "queued"),
        ("relu", 4, "queued"),
        ("tanh", 3, "queued"),
        ("tanh", 4, "queued"),
    ]
    assert {run["seed_extension_id"] for run in added["runs"]} == {added["id"]}
    # Committed first, then sent: exactly the new runs.
    assert dispatcher.enqueued[-1] == ([uuid.UUID(run["id"]) for run in added["runs"]], "cpu")
    assert dispatcher.committed_before_enqueue[-1] is True
    # Some runs ended, some wait: the finished experiment is running again until the new runs end.
    assert added["experiment"]["status"] == "running"
    assert added["experiment"]["finished_at"] is None

    detail = client.get(f"/v1/experiments/{experiment['id']}").json()
    assert detail["id"] == experiment["id"]
    assert detail["spec_hash"] == experiment["spec_hash"]
    assert detail["spec"]["seeds"] == [0, 1, 3, 4]
    assert detail["status"] == "running"
    assert detail["progress"]["total_epochs"] == 8 * 3
    assert detail["progress"]["runs_total"] == 8
    # Every activation has every seed: the pairs of the paired statistics.
    pairs = {(run["activation"], run["seed"]) for run in detail["runs"]}
    assert pairs == {(activation, seed) for activation in ("relu", "tanh") for seed in (0, 1, 3, 4)}
    assert [extension["seeds"] for extension in detail["seed_extensions"]] == [[3, 4]]
    assert detail["seed_extensions"][0]["id"] == added["id"]
    origin = {run["seed"]: run["seed_extension_id"] for run in detail["runs"]}
    assert origin == {0: None, 1: None, 3: added["id"], 4: added["id"]}
    assert detail["links"]["seeds"] == f"/v1/experiments/{experiment['id']}/seeds"

    _finish_runs(db, experiment["id"])
    finished = client.get(f"/v1/experiments/{experiment['id']}").json()
    assert finished["status"] == "succeeded" and finished["finished_at"] is not None
    assert finished["progress"]["fraction"] == 1.0
    # The old runs' metric rows are untouched and each (run, epoch) appears once.
    rows = client.get(f"/v1/experiments/{experiment['id']}/metrics").json()
    keys = [(row["run_id"], row["epoch"]) for row in rows]
    assert len(keys) == len(set(keys)) == 8 * 3


def test_a_running_experiment_takes_seeds_and_a_second_request_is_recorded_apart(
    client: TestClient, db: Session
) -> None:
    experiment = _submit(client, seeds=[0])
    first = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [7]})
    second = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [2]})
    assert (first.status_code, second.status_code) == (202, 202)
    detail = client.get(f"/v1/experiments/{experiment['id']}").json()
    # Appended in the order they were added; runs are listed in grid order.
    assert detail["spec"]["seeds"] == [0, 7, 2]
    assert [run["seed"] for run in detail["runs"]] == [0, 2, 7, 0, 2, 7]
    assert [extension["id"] for extension in detail["seed_extensions"]] == [first.json()["id"], second.json()["id"]]
    assert detail["spec_hash"] == experiment["spec_hash"]


def test_seeds_the_experiment_already_has_are_a_422_naming_them(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    experiment = _submit(client)
    before, sent = row_counts(db), len(dispatcher.enqueued)

    response = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [1, 5, 0]})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == "seeds" and error["type"] == "seed_exists"
    assert "already has seed(s) 0, 1" in error["msg"]
    assert row_counts(db) == before and len(dispatcher.enqueued) == sent
    assert client.get(f"/v1/experiments/{experiment['id']}").json()["spec"]["seeds"] == [0, 1]


@pytest.mark.parametrize(
    ("body", "location", "fragment"),
    [
        ({"seeds": [True]}, "seeds.0", "not a boolean"),
        ({"seeds": [3, False]}, "seeds.1", "not a boolean"),
        ({"seeds": [-1]}, "seeds.0", "greater than or equal to 0"),
        ({"seeds": ["three"]}, "seeds.0", "valid integer"),
        ({"seeds": []}, "seeds", "at least 1"),
        ({"seeds": [4, 4]}, "seeds", "sent more than once: 4"),
        ({"seeds": [3], "note": "x"}, "note", "Extra inputs"),
        ({}, "seeds", "Field required"),
    ],
)
def test_bad_seed_requests_get_422_naming_the_field(
    client: TestClient, db: Session, body: dict[str, Any], location: str, fragment: str
) -> None:
    experiment = _submit(client)
    before = row_counts(db)
    response = client.post(f"/v1/experiments/{experiment['id']}/seeds", json=body)
    assert response.status_code == 422, response.text
    errors = {error["loc"]: error["msg"] for error in response.json()["detail"]}
    assert location in errors and fragment in errors[location], errors
    assert row_counts(db) == before


def test_a_body_that_is_not_utf8_json_is_the_same_422_as_any_body_that_is_not_json(
    client: TestClient, db: Session
) -> None:
    experiment = _submit(client)
    before = row_counts(db)
    response = client.post(
        f"/v1/experiments/{experiment['id']}/seeds",
        content=b'{"seeds": [\xff]}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid"
    assert error["msg"].startswith("the request body is not valid JSON")
    assert row_counts(db) == before


def test_a_cancelled_experiment_cannot_take_seeds(client: TestClient, db: Session) -> None:
    experiment = _submit(client)
    assert client.post(f"/v1/experiments/{experiment['id']}/cancel").status_code == 200
    before = row_counts(db)
    response = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [3]})
    assert response.status_code == 409
    assert "cancelled" in response.json()["detail"]
    assert row_counts(db) == before


def test_another_owners_experiment_is_not_found(app: FastAPI, db: Session) -> None:
    owner, stranger = make_key(app, name="owner"), make_key(app, name="stranger")
    with TestClient(app) as client:
        experiment = client.post("/v1/experiments", json=small_spec(), headers=bearer(owner)).json()
        before = row_counts(db)
        refused = client.post(
            f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [3]}, headers=bearer(stranger)
        )
        missing = client.post(f"/v1/experiments/{uuid.uuid4()}/seeds", json={"seeds": [3]}, headers=bearer(stranger))
        assert (refused.status_code, missing.status_code) == (404, 404)
        assert row_counts(db) == before
        allowed = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [3]}, headers=bearer(owner))
        assert allowed.status_code == 202


def _app_with(settings: Settings, **changes: Any) -> FastAPI:
    application = create_app(settings.model_copy(update=changes))
    application.dependency_overrides[get_dispatcher] = RecordingDispatcher
    return application


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def app_with(settings: Settings) -> AppFactory:
    """Build the app with some settings changed."""
    return lambda **changes: _app_with(settings, **changes)


def test_the_spec_limits_hold_for_the_extended_experiment(app_with: AppFactory) -> None:
    app = app_with(max_seeds=3, max_seed_value=100)
    key = make_key(app, name="owner", admin=True)
    with TestClient(app, headers=bearer(key)) as client, app.state.session_factory() as db:
        experiment = _submit(client)
        before = row_counts(db)
        too_many = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [5, 6]})
        assert too_many.status_code == 422
        (error,) = too_many.json()["detail"]
        assert error["loc"] == "seeds" and "ACTLAB_MAX_SEEDS" in error["msg"]
        too_large = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [101]})
        assert too_large.status_code == 422 and too_large.json()["detail"][0]["loc"] == "seeds"
        assert "at most 100" in too_large.json()["detail"][0]["msg"]
        assert row_counts(db) == before
        assert client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [5]}).status_code == 202


def test_quotas_count_a_seed_extension_as_a_submission_of_its_new_arms(app_with: AppFactory) -> None:
    app = app_with(max_active_arms_per_owner=6, max_submissions_per_minute=3)
    key = make_key(app, name="owner")
    with TestClient(app, headers=bearer(key)) as client, app.state.session_factory() as db:
        experiment = _submit(client)  # 4 arms queued
        over_cap = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [5, 6]})
        assert over_cap.status_code == 429 and int(over_cap.headers["Retry-After"]) > 0
        assert "this seed extension has 4 arms" in over_cap.json()["detail"]
        assert "ACTLAB_MAX_ACTIVE_ARMS_PER_OWNER" in over_cap.json()["detail"]
        alone_too_big = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [5, 6, 7, 8]})
        assert alone_too_big.status_code == 422 and alone_too_big.json()["detail"][0]["loc"] == "seeds"
        assert client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [5]}).status_code == 202
        # The runs end: arms free up, and the per-minute cap counts the submission and the extension.
        db.execute(update(Run).values(status=RunStatus.succeeded))
        db.commit()
        assert client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [6]}).status_code == 202
        refused = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [7]})
        assert refused.status_code == 429 and "ACTLAB_MAX_SUBMISSIONS_PER_MINUTE" in refused.json()["detail"]
        assert client.post("/v1/experiments", json=small_spec()).status_code == 429
        assert int(db.scalar(select(func.count()).select_from(Run)) or 0) == 4 + 2 + 2


def test_a_refused_enqueue_answers_503_and_keeps_the_new_runs_queued(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    experiment = _submit(client)
    dispatcher.fail_with = ConnectionError("broker down")
    response = client.post(f"/v1/experiments/{experiment['id']}/seeds", json={"seeds": [3]})
    assert response.status_code == 503
    assert "actlab maintain" in response.json()["detail"]
    detail = client.get(f"/v1/experiments/{experiment['id']}").json()
    assert [run["status"] for run in detail["runs"] if run["seed"] == 3] == ["queued", "queued"]
