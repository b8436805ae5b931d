"""Per-owner quotas (429 with Retry-After) and server-owned fields (422)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Settings
from app.dependencies import get_dispatcher
from app.main import create_app
from app.models import Experiment
from app.models.types import utc_now
from tests.api.conftest import RecordingDispatcher, bearer, make_key, row_counts, small_spec

QuotaApp = Callable[..., FastAPI]


@pytest.fixture
def quota_app(settings: Settings) -> Iterator[QuotaApp]:
    """Build the app with some quota settings changed."""

    def build(**changes: Any) -> FastAPI:
        application = create_app(settings.model_copy(update=changes))
        application.dependency_overrides[get_dispatcher] = RecordingDispatcher
        return application

    yield build


def _post(client: TestClient, key: str, **headers: str) -> Any:
    return client.post("/v1/experiments", json=small_spec(), headers={**bearer(key), **headers})


def _age_experiments(session: Session, seconds: float) -> None:
    session.execute(update(Experiment).values(created_at=utc_now() - timedelta(seconds=seconds)))
    session.commit()


def test_submissions_per_minute_are_capped_per_owner_with_retry_after(quota_app: QuotaApp) -> None:
    app = quota_app(max_submissions_per_minute=2, max_active_arms_per_owner=0)
    alice, bob = make_key(app, name="alice"), make_key(app, name="bob")
    with TestClient(app) as client, app.state.session_factory() as db:
        assert _post(client, alice, **{"Idempotency-Key": "first"}).status_code == 202
        assert _post(client, alice).status_code == 202
        refused = _post(client, alice)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "ACTLAB_MAX_SUBMISSIONS_PER_MINUTE" in refused.json()["detail"]
        assert row_counts(db)["experiments"] == 2  # nothing of the refused one is stored
        # A retry of an accepted submission is not a new one: it still answers with the experiment.
        assert _post(client, alice, **{"Idempotency-Key": "first"}).status_code == 200
        assert _post(client, bob).status_code == 202  # another key has its own allowance


def test_the_submission_window_slides(quota_app: QuotaApp) -> None:
    app = quota_app(max_submissions_per_minute=1, max_active_arms_per_owner=0)
    key = make_key(app, name="steady")
    with TestClient(app) as client, app.state.session_factory() as db:
        assert _post(client, key).status_code == 202
        _age_experiments(db, 50)
        refused = _post(client, key)
        assert refused.status_code == 429
        # The oldest submission in the window leaves it in about ten seconds.
        assert 9 <= int(refused.headers["Retry-After"]) <= 10
        _age_experiments(db, 61)
        assert _post(client, key).status_code == 202


def test_queued_and_running_arms_are_capped_per_owner(quota_app: QuotaApp) -> None:
    app = quota_app(max_active_arms_per_owner=6, max_submissions_per_minute=0)
    alice, bob = make_key(app, name="alice"), make_key(app, name="bob")
    with TestClient(app) as client, app.state.session_factory() as db:
        first = _post(client, alice)  # four arms: two activations x two seeds
        assert first.status_code == 202
        refused = _post(client, alice)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "already has 4 queued or running" in refused.json()["detail"]
        assert row_counts(db)["runs"] == 4
        assert _post(client, bob).status_code == 202
        # Cancelled runs no longer count.
        assert client.post(f"/v1/experiments/{first.json()['id']}/cancel", headers=bearer(alice)).status_code == 200
        assert _post(client, alice).status_code == 202


def test_an_experiment_larger_than_the_arm_cap_is_a_422_not_a_429(quota_app: QuotaApp) -> None:
    app = quota_app(max_active_arms_per_owner=3)
    key = make_key(app, name="big")
    with TestClient(app) as client:
        response = _post(client, key)
    assert response.status_code == 422
    assert "ACTLAB_MAX_ACTIVE_ARMS_PER_OWNER" in response.json()["detail"][0]["msg"]


def test_quota_caps_are_in_the_catalog(client: TestClient) -> None:
    limits = {entry["name"]: entry for entry in client.get("/v1/catalog").json()["limits"]}
    assert limits["max_active_arms_per_owner"]["environment_variable"] == "ACTLAB_MAX_ACTIVE_ARMS_PER_OWNER"
    assert limits["max_submissions_per_minute"]["value"] == 60


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("owner", "someone-else"),
        ("owner_id", str(uuid.uuid4())),
        ("status", "succeeded"),
        ("attempt", 3),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("started_at", "2020-01-01T00:00:00Z"),
        ("finished_at", "2020-01-01T00:00:00Z"),
        ("id", str(uuid.uuid4())),
        ("spec_hash", "0" * 64),
        ("runs", []),
        ("progress", {"fraction": 1.0}),
    ],
)
def test_server_owned_fields_in_a_body_get_422_naming_the_field(
    client: TestClient, db: Session, field: str, value: Any
) -> None:
    response = client.post("/v1/experiments", json={**small_spec(), field: value})
    assert response.status_code == 422
    errors = {error["loc"]: error for error in response.json()["detail"]}
    assert errors[field]["type"] == "server_owned_field"
    assert "set by the service" in errors[field]["msg"]
    assert row_counts(db)["experiments"] == 0


def test_quota_settings_reject_negative_values() -> None:
    with pytest.raises(ValueError, match="max_submissions_per_minute"):
        Settings(max_submissions_per_minute=-1)
