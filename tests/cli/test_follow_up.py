"""``actlab extend ID --seeds 3 4`` and ``actlab retry ID`` against the real API (in process, authentication on)."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.auth.service import create_api_key
from app.cli import build_parser
from app.cli.experiments import extend, retry
from app.config import Settings
from app.dependencies import get_dispatcher
from app.main import create_app
from app.migrate import upgrade_database
from app.models import Run, RunStatus
from tests.api.conftest import RecordingDispatcher, bearer, small_spec


class _AppTransport(httpx.BaseTransport):
    """Sends the CLI's requests to the app through a TestClient, as if over the network."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        headers = {name: value for name, value in request.headers.items() if name not in ("host", "content-length")}
        answer = self._client.request(
            request.method,
            str(request.url.copy_with(scheme="http", netloc=b"testserver")),
            content=request.read(),
            headers=headers,
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[FastAPI, TestClient, str]]:
    """The app on a migrated SQLite file with a recording dispatcher, a client and an admin key."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade_database(url)
    application = create_app(
        Settings(
            DATABASE_URL=url,
            BROKER_URL="filesystem://",
            broker_folder=tmp_path / "broker",
            auth_required=True,
            credentials_file=tmp_path / "config" / "credentials.json",
        )
    )
    application.dependency_overrides[get_dispatcher] = RecordingDispatcher
    with application.state.session_factory() as session:
        key = create_api_key(session=session, name="cli", is_admin=True).key
    with TestClient(application, headers=bearer(key)) as client:
        yield application, client, key


def _arguments(key: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([*argv, "--url", "http://127.0.0.1:8000", "--api-key", key])


def _submit(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.post("/v1/experiments", json=small_spec()).json()
    return body


def test_actlab_extend_adds_the_seeds_and_names_the_ones_the_experiment_has(
    service: tuple[FastAPI, TestClient, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, client, key = service
    experiment = _submit(client)
    transport = _AppTransport(client)

    assert extend(_arguments(key, "extend", experiment["id"], "--seeds", "3", "4"), transport=transport) == 0
    printed = capsys.readouterr().out
    assert f"experiment {experiment['id']}: seeds 3, 4 added" in printed
    assert "4 new run(s) queued" in printed and f"actlab status {experiment['id']}" in printed
    detail = client.get(f"/v1/experiments/{experiment['id']}").json()
    assert detail["spec"]["seeds"] == [0, 1, 3, 4] and detail["spec_hash"] == experiment["spec_hash"]

    assert extend(_arguments(key, "extend", experiment["id"], "--seeds", "1", "5"), transport=transport) == 2
    assert "seeds: the experiment already has seed(s) 1" in capsys.readouterr().err
    assert len(client.get(f"/v1/experiments/{experiment['id']}").json()["runs"]) == 8


def test_actlab_extend_needs_integer_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["extend", str(uuid.uuid4()), "--seeds", "3", "three"])
    assert exited.value.code == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extend", str(uuid.uuid4())])


def test_actlab_retry_requeues_the_failed_runs_then_says_there_is_nothing_left(
    service: tuple[FastAPI, TestClient, str], capsys: pytest.CaptureFixture[str]
) -> None:
    app, client, key = service
    experiment = _submit(client)
    failed = uuid.UUID(experiment["runs"][1]["id"])
    with app.state.session_factory() as session:
        session.execute(update(Run).values(status=RunStatus.succeeded, attempt=1))
        session.execute(update(Run).where(Run.id == failed).values(status=RunStatus.failed, error="boom"))
        session.commit()
    transport = _AppTransport(client)

    assert retry(_arguments(key, "retry", experiment["id"]), transport=transport) == 0
    printed = capsys.readouterr().out
    assert f"experiment {experiment['id']}: 1 run(s) requeued" in printed
    assert "relu seed 1" in printed
    assert client.get(f"/v1/runs/{failed}").json()["status"] == "queued"

    assert retry(_arguments(key, "retry", experiment["id"]), transport=transport) == 2
    assert "no failed or timed-out run to retry" in capsys.readouterr().err
