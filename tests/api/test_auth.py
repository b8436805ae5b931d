"""API keys: 401s, owner isolation on every experiment route, admin visibility, the keys CLI, local credentials."""

from __future__ import annotations

import base64
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, routing
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.auth.local import ensure_local_key, read_local_key, service_address
from app.auth.service import AuthExposureError, check_auth_exposure, revoke_api_key
from app.cli import main as actlab
from app.config import Settings, get_settings
from app.models import Experiment, ExperimentStatus, Run, RunStatus
from tests.api.conftest import bearer, make_key, small_spec

OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/docs/assets/{name}",
    "/assets/{name}",
    "/redoc",
}


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route of the app, HEAD left out."""
    found = []
    for route in routing.iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, str(route.path)))
    return found


def _fill(template: str, *, experiment_id: object, run_id: object) -> str:
    return (
        template.replace("{experiment_id}", str(experiment_id))
        .replace("{run_id}", str(run_id))
        .replace("{filename}", "learning-curves.png")
    )


def _submit(client: TestClient, key: str, name: str, **headers: str) -> dict[str, Any]:
    response = client.post("/v1/experiments", json=small_spec(name=name), headers={**bearer(key), **headers})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def _finish(db: Session, experiment_id: str) -> None:
    """Mark an experiment and its runs succeeded, so streams of it end at once."""
    identifier = uuid.UUID(experiment_id)
    db.execute(update(Run).where(Run.experiment_id == identifier).values(status=RunStatus.succeeded))
    db.execute(update(Experiment).where(Experiment.id == identifier).values(status=ExperimentStatus.succeeded))
    db.commit()


def test_every_route_but_health_metrics_and_docs_needs_a_key(app: FastAPI) -> None:
    routes = _routes(app)
    protected = [(method, path) for method, path in routes if path not in OPEN_PATHS]
    assert ("POST", "/v1/experiments") in protected and ("GET", "/") in protected
    with TestClient(app) as anonymous:
        for method, template in protected:
            response = anonymous.request(method, _fill(template, experiment_id=uuid.uuid4(), run_id=uuid.uuid4()))
            assert response.status_code == 401, (method, template, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "API key" in response.json()["detail"]
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
            assert anonymous.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer al_not-a-real-key",
        "Bearer ",
        "Token something",
        "Basic " + base64.b64encode(b"user:al_wrong").decode(),
        "Basic !!!",
        "Bearer " + "x" * 5000,
    ],
)
def test_unknown_or_malformed_keys_get_401(app: FastAPI, authorization: str) -> None:
    with TestClient(app) as anonymous:
        response = anonymous.get("/v1/experiments", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_a_revoked_key_stops_working_at_once(app: FastAPI, db: Session) -> None:
    key = make_key(app, name="soon revoked")
    with TestClient(app, headers=bearer(key)) as client:
        assert client.get("/v1/me").json()["name"] == "soon revoked"
        revoke_api_key(session=db, prefix_or_id=key[:11])
        response = client.get("/v1/experiments")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_browsers_can_send_the_key_as_a_basic_password(app: FastAPI, client: TestClient) -> None:
    key = make_key(app, name="browser")
    experiment = _submit(client, key, "seen in the browser")
    basic = "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()
    with TestClient(app) as browser:
        challenge = browser.get("/").headers["WWW-Authenticate"]
        page = browser.get("/", headers={"Authorization": basic})
    assert "Basic" in challenge
    assert page.status_code == 200
    assert "seen in the browser" in page.text
    assert experiment["id"] in page.text


def test_another_owner_gets_404_on_every_route_of_an_experiment_and_its_runs(
    app: FastAPI, client: TestClient, db: Session
) -> None:
    owner, stranger = make_key(app, name="owner"), make_key(app, name="stranger")
    experiment = _submit(client, owner, "private grid")
    _finish(db, experiment["id"])
    run_id = experiment["runs"][0]["id"]
    templates = [(method, path) for method, path in _routes(app) if "{experiment_id}" in path or "{run_id}" in path]
    # The route table is read, not listed by hand: a new experiment route is checked without editing this test.
    assert {"/v1/experiments/{experiment_id}/cancel", "/v1/runs/{run_id}", "/experiments/{experiment_id}"} <= {
        path for _method, path in templates
    }
    with TestClient(app) as anonymous:
        for method, template in templates:
            path = _fill(template, experiment_id=experiment["id"], run_id=run_id)
            refused = anonymous.request(method, path, headers=bearer(stranger))
            assert refused.status_code == 404, (method, template, refused.text)
            allowed = anonymous.request(method, path, headers=bearer(owner))
            assert allowed.status_code not in (401, 404), (method, template, allowed.text)
            # The answer to a stranger is the same as for an id that does not exist at all.
            missing = anonymous.request(
                method, _fill(template, experiment_id=uuid.uuid4(), run_id=uuid.uuid4()), headers=bearer(stranger)
            )
            assert missing.status_code == 404
            assert refused.json()["detail"].split()[0] == missing.json()["detail"].split()[0]


def test_a_stranger_cannot_cancel_and_the_experiment_keeps_running(
    app: FastAPI, client: TestClient, db: Session
) -> None:
    owner, stranger = make_key(app, name="owner"), make_key(app, name="stranger")
    experiment = _submit(client, owner, "keep going")
    with TestClient(app) as anonymous:
        assert anonymous.post(f"/v1/experiments/{experiment['id']}/cancel", headers=bearer(stranger)).status_code == 404
        status = anonymous.get(f"/v1/experiments/{experiment['id']}", headers=bearer(owner)).json()["status"]
    assert status == "queued"


def test_lists_show_only_the_callers_experiments_and_admins_see_all(app: FastAPI, client: TestClient) -> None:
    alice, bob = make_key(app, name="alice"), make_key(app, name="bob")
    _submit(client, alice, "alice one")
    _submit(client, alice, "alice two")
    _submit(client, bob, "bob one")

    def names(key: str | None = None) -> tuple[set[str], int]:
        headers = bearer(key) if key else {}
        page = client.get("/v1/experiments", headers=headers).json()
        return {item["name"] for item in page["items"]}, page["total"]

    assert names(alice) == ({"alice one", "alice two"}, 2)
    assert names(bob) == ({"bob one"}, 1)
    assert names() == ({"alice one", "alice two", "bob one"}, 3)  # the fixture's client sends an admin key
    assert "alice one" not in client.get("/", headers=bearer(bob)).text


def test_admins_see_and_cancel_every_owners_experiment(app: FastAPI, client: TestClient) -> None:
    owner = make_key(app, name="owner")
    experiment = _submit(client, owner, "admin may cancel")
    assert client.get(f"/v1/experiments/{experiment['id']}").status_code == 200
    cancelled = client.post(f"/v1/experiments/{experiment['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"


def test_experiments_belong_to_the_key_that_submitted_them(app: FastAPI, client: TestClient, db: Session) -> None:
    key = make_key(app, name="submitter")
    experiment = _submit(client, key, "owned")
    me = client.get("/v1/me", headers=bearer(key)).json()
    stored = db.get(Experiment, uuid.UUID(experiment["id"]))
    assert stored is not None and str(stored.owner_id) == me["owner_id"]
    assert me["is_admin"] is False and me["prefix"] == key[:11]


def test_idempotency_keys_are_per_owner(app: FastAPI, client: TestClient) -> None:
    alice, bob = make_key(app, name="alice"), make_key(app, name="bob")
    first = _submit(client, alice, "same key", **{"Idempotency-Key": "shared"})
    second = _submit(client, bob, "same key", **{"Idempotency-Key": "shared"})
    replay = client.post(
        "/v1/experiments", json=small_spec(name="same key"), headers={**bearer(alice), "Idempotency-Key": "shared"}
    )
    assert first["id"] != second["id"]
    assert replay.status_code == 200 and replay.json()["id"] == first["id"]


def test_with_authentication_off_every_request_acts_as_the_local_admin(settings: Settings) -> None:
    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"auth_required": False}))) as client:
        me = client.get("/v1/me").json()
        submitted = client.post("/v1/experiments", json=small_spec())
    assert me["is_admin"] is True and me["auth_required"] is False and me["owner_id"] is None
    # No dispatcher override here, so enqueueing may fail (503), but the request got past authentication.
    assert submitted.status_code in (202, 503)


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", False),
        ("127.3.2.1", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("example.org", True),
        ("", True),
    ],
)
def test_authentication_is_never_off_beyond_loopback(settings: Settings, host: str, refused: bool) -> None:
    check_auth_exposure(settings=settings, host=host)  # with authentication on, any interface is fine
    off = settings.model_copy(update={"auth_required": False})
    if refused:
        with pytest.raises(AuthExposureError, match="authentication off"):
            check_auth_exposure(settings=off, host=host)
    else:
        check_auth_exposure(settings=off, host=host)


def test_local_key_is_created_once_stored_privately_and_works(app: FastAPI, settings: Settings, db: Session) -> None:
    url = "http://127.0.0.1:8123"
    created = ensure_local_key(settings=settings, session=db, url=url)
    assert created is not None and created.startswith("al_")
    path = settings.credentials_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_local_key("http://localhost:8123/", path=path) == created
    assert read_local_key("http://127.0.0.1:9999", path=path) is None
    assert ensure_local_key(settings=settings, session=db, url=url) is None  # reused, nothing new to print
    with TestClient(app, headers=bearer(created)) as client:
        assert client.get("/v1/me").json()["is_admin"] is True

    revoke_api_key(session=db, prefix_or_id=created[:11])
    replacement = ensure_local_key(settings=settings, session=db, url=url)
    assert replacement is not None and replacement != created
    assert read_local_key(url, path=path) == replacement


def test_no_local_key_for_shared_interfaces_or_without_authentication(settings: Settings, db: Session) -> None:
    assert ensure_local_key(settings=settings, session=db, url="http://0.0.0.0:8000") is None
    off = settings.model_copy(update={"auth_required": False})
    assert ensure_local_key(settings=off, session=db, url="http://127.0.0.1:8000") is None
    assert not settings.credentials_file.exists()


def test_service_addresses_are_normalised() -> None:
    assert service_address("http://localhost:8000/") == "http://127.0.0.1:8000"
    assert service_address("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert service_address("https://lab.example.org") == "https://lab.example.org:443"


def test_keys_cli_creates_lists_and_revokes(
    app: FastAPI, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        assert actlab(["keys", "create", "--name", "ci robot"]) == 0
        created = capsys.readouterr()
        key = created.out.strip()
        assert key.startswith("al_") and "\n" not in key
        assert "cannot be shown again" in created.err and key not in created.err

        assert actlab(["keys", "list"]) == 0
        listing = capsys.readouterr().out
        assert "ci robot" in listing and key[:11] in listing
        assert key not in listing

        with TestClient(app, headers=bearer(key)) as client:
            assert client.get("/v1/experiments").status_code == 200
            assert actlab(["keys", "revoke", key[:11]]) == 0
            assert "revoked" in capsys.readouterr().out
            assert client.get("/v1/experiments").status_code == 401

        assert actlab(["keys", "revoke", "al_nothing"]) == 2
        assert "no API key" in capsys.readouterr().err
        assert actlab(["keys", "create", "--name", "   "]) == 2
    finally:
        get_settings.cache_clear()


def test_short_prefixes_that_match_several_keys_are_refused(app: FastAPI, db: Session) -> None:
    from app.service_errors import ConflictError

    make_key(app, name="one")
    make_key(app, name="two")
    with pytest.raises(ConflictError, match="matches"):
        revoke_api_key(session=db, prefix_or_id="al_")


def test_an_unreachable_database_while_checking_a_key_is_a_503(settings: Settings, tmp_path: Path) -> None:
    from app.main import create_app

    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/missing/dir/db.sqlite"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/v1/experiments", headers=bearer("al_anything"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "database" in response.json()["detail"]


def test_keys_cli_on_an_unmigrated_database_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    get_settings.cache_clear()
    try:
        assert actlab(["keys", "list"]) == 1
    finally:
        get_settings.cache_clear()
    assert "actlab migrate" in capsys.readouterr().err


def test_an_imported_experiment_belongs_to_the_key_that_imported_it(app: FastAPI) -> None:
    owner = make_key(app, name="importer")
    stranger = make_key(app, name="stranger")
    with TestClient(app) as client:
        original = _submit(client, owner, "to archive")
        archive = client.get(f"/v1/experiments/{original['id']}/export", headers=bearer(owner))
        assert archive.status_code == 200, archive.text
        response = client.post(
            "/v1/experiments/import",
            content=archive.content,
            headers={**bearer(owner), "Content-Type": "application/zip"},
        )
        assert response.status_code == 201, response.text
        imported = response.json()["id"]
        assert client.get(f"/v1/experiments/{imported}", headers=bearer(owner)).status_code == 200
        assert client.get(f"/v1/experiments/{imported}", headers=bearer(stranger)).status_code == 404
        listed = client.get("/v1/experiments", headers=bearer(stranger)).json()
        assert imported not in {item["id"] for item in listed["items"]}
