"""Fixtures of the API tests: a migrated SQLite file per test, the app, a client and a recording dispatcher.

Authentication is on, as in production: ``client`` sends a real admin key created in the test
database; ``make_key`` creates more keys (owners) for tests of ownership.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import create_api_key
from app.config import Settings
from app.dependencies import get_dispatcher
from app.main import create_app
from app.migrate import upgrade_database
from app.models import EpochMetric, Experiment, LayerMetric, Run
from tests.fixtures import fresh_postgres_database, sqlite_copy


class RecordingDispatcher:
    """Routes like production (cuda -> gpu, else cpu) and records each enqueue instead of sending it.

    It also checks, from a separate session, that the runs it is handed are already committed.
    """

    def __init__(self) -> None:
        self.enqueued: list[tuple[list[uuid.UUID], str]] = []
        self.fail_with: Exception | None = None
        self.session_factory: sessionmaker[Session] | None = None
        self.committed_before_enqueue: list[bool] = []

    def choose_queue(self, *, session: Session, device: str) -> str:
        return "gpu" if device == "cuda" else "cpu"

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.session_factory is not None:
            with self.session_factory() as other:
                visible = other.scalar(select(func.count()).select_from(Run).where(Run.id.in_(run_ids)))
            self.committed_before_enqueue.append(visible == len(run_ids))
        self.enqueued.append((list(run_ids), queue))

    @property
    def run_ids(self) -> list[uuid.UUID]:
        return [run_id for batch, _queue in self.enqueued for run_id in batch]


@pytest.fixture
def database_url(tmp_path: Path, migrated_template: Path) -> str:
    return sqlite_copy(migrated_template, tmp_path / "api.db")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        BROKER_URL="filesystem://",
        broker_folder=tmp_path / "broker",
        max_body_bytes=64 * 1024,
        page_size_limit=100,
        auth_required=True,
        credentials_file=tmp_path / "config" / "credentials.json",
    )


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def app(settings: Settings, dispatcher: RecordingDispatcher) -> FastAPI:
    application = create_app(settings)
    dispatcher.session_factory = application.state.session_factory
    application.dependency_overrides[get_dispatcher] = lambda: dispatcher
    return application


def make_key(app: FastAPI, *, name: str, admin: bool = False) -> str:
    """Create an API key in the app's database and return the secret."""
    with app.state.session_factory() as session:
        return create_api_key(session=session, name=name, is_admin=admin).key


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for a key."""
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def postgres_client_of(database: str, tmp_path: Path) -> Iterator[TestClient]:
    """A client with an owner's key of the API on a fresh, migrated PostgreSQL database of that name (dropped after)."""
    with fresh_postgres_database(database) as url:
        upgrade_database(url)
        application = create_app(Settings(DATABASE_URL=url, BROKER_URL="filesystem://", broker_folder=tmp_path / "b"))
        application.dependency_overrides[get_dispatcher] = RecordingDispatcher
        key = make_key(application, name="postgres owner")
        with TestClient(application, headers=bearer(key)) as client:
            yield client


@pytest.fixture
def admin_key(app: FastAPI) -> str:
    """A real admin key in the test database."""
    return make_key(app, name="test admin", admin=True)


@pytest.fixture
def client(app: FastAPI, admin_key: str) -> Iterator[TestClient]:
    """A client that sends the admin key with every request."""
    with TestClient(app, headers=bearer(admin_key)) as test_client:
        yield test_client


@pytest.fixture
def db(app: FastAPI) -> Iterator[Session]:
    """A session on the test database, for arranging and checking rows directly."""
    session: Session = app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def small_spec(**overrides: Any) -> dict[str, Any]:
    """A valid spec with two activations and two seeds."""
    spec: dict[str, Any] = {
        "name": "tiny grid",
        "dataset": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [16]},
        "activations": ["relu", "tanh"],
        "seeds": [0, 1],
        "training": {"epochs": 3},
        "device": "cpu",
    }
    spec.update(overrides)
    return spec


def row_counts(session: Session) -> dict[str, int]:
    """How many rows each table the API writes holds."""
    session.expire_all()
    return {
        model.__tablename__: int(session.scalar(select(func.count()).select_from(model)) or 0)
        for model in (Experiment, Run, EpochMetric, LayerMetric)
    }


# What row_counts reads where the API has stored nothing.
NOTHING = {"experiments": 0, "runs": 0, "epoch_metrics": 0, "layer_metrics": 0}


def assert_spec_rejected(
    client: TestClient, db: Session, spec: dict[str, Any], location: str, fragments: list[str]
) -> None:
    """POST /v1/experiments with ``spec`` is a 422 whose message at ``location`` holds every fragment; nothing stored."""
    response = client.post("/v1/experiments", json=spec)

    assert response.status_code == 422, response.text
    errors = {error["loc"]: error["msg"] for error in response.json()["detail"]}
    assert location in errors, errors
    for fragment in fragments:
        assert fragment in errors[location]
    assert row_counts(db) == NOTHING


def parquet_rows(content: bytes) -> list[dict[str, Any]]:
    """A Parquet body as JSON-like rows: NaN/infinity as null and JSON text parsed, as the JSON table has them."""
    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO(content)).to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = None
        if row.get("activation_parameters") is not None:
            row["activation_parameters"] = json.loads(row["activation_parameters"])
    return rows
