"""State-changing requests are refused cross-site (issue 14 item 2), against a real uvicorn.

A browser replays the HTTP Basic login of the dashboard on every request to the site, and a page of
any other site can make it POST a form there (bodies text/plain, urlencoded or multipart, no custom
headers). So: Basic is accepted on GET and HEAD only; POST, PUT, PATCH and DELETE need a Bearer key
(401 saying so), bodies must be application/json (415 naming it), and another Origin gets 403.
The requests are sent as curl would (httpx, headers spelt out), then by a real cross-site form in
headless Chromium that has logged in with Basic credentials first.
"""

from __future__ import annotations

import base64
import fcntl
import html
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import small_spec
from tests.api.served import create_key, serve_api
from tests.fixtures import free_port, sqlite_copy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_SECONDS = 60


@dataclass(frozen=True)
class Served:
    """The uvicorn of this module: its URL, its log (with the access log) and its database."""

    url: str
    log_path: Path
    database_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One uvicorn with authentication on for the module."""
    workdir = tmp_path_factory.mktemp("csrf")
    database_url = sqlite_copy(migrated_template, workdir / "api.db")
    with serve_api(database_url=database_url, workdir=workdir, settings={"ACTLAB_AUTH_REQUIRED": "true"}) as url:
        yield Served(url=url, log_path=workdir / "uvicorn.log", database_url=database_url)


@pytest.fixture
def served(server: Served) -> tuple[Served, str]:
    """The server and a new key of its own for each test (another key's experiments are invisible to it)."""
    return server, create_key(server.database_url, name=f"victim {uuid.uuid4().hex[:8]}")


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"reader:{key}".encode()).decode()}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _submit(api: Served, key: str) -> dict[str, Any]:
    created = httpx.post(f"{api.url}/v1/experiments", json=small_spec(), headers=_bearer(key), timeout=30)
    assert created.status_code == 202, created.text
    experiment: dict[str, Any] = created.json()
    return experiment


def _experiments(api: Served, key: str) -> list[dict[str, Any]]:
    listed = httpx.get(f"{api.url}/v1/experiments", headers=_bearer(key), timeout=30)
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


def test_basic_credentials_read_but_never_change_anything(served: tuple[Served, str]) -> None:
    api, key = served
    experiment = _submit(api, key)
    cancel = f"{api.url}/v1/experiments/{experiment['id']}/cancel"

    assert httpx.get(f"{api.url}/v1/experiments", headers=_basic(key)).status_code == 200
    assert httpx.get(f"{api.url}/v1/experiments/{experiment['id']}", headers=_basic(key)).status_code == 200

    for response in (
        httpx.post(f"{api.url}/v1/experiments", json=small_spec(name="forged"), headers=_basic(key)),
        httpx.post(cancel, headers=_basic(key)),
    ):
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["detail"]
        assert "GET and HEAD" in response.json()["detail"]
        # No Basic challenge: a browser must not offer to log in for a POST.
        assert response.headers.get_list("WWW-Authenticate") == ['Bearer realm="Activation Lab"']

    [only] = _experiments(api, key)
    assert only["id"] == experiment["id"] and only["status"] == "queued"


def test_state_changing_bodies_must_be_json_and_a_bodyless_cancel_works_with_bearer(
    served: tuple[Served, str],
) -> None:
    api, key = served
    spec = json.dumps(small_spec(name="typed")).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        refused = httpx.post(
            f"{api.url}/v1/experiments", content=spec, headers={**_bearer(key), "Content-Type": content_type}
        )
        assert refused.status_code == 415, content_type
        assert "send application/json" in refused.json()["detail"]
    untyped = httpx.post(f"{api.url}/v1/experiments", content=spec, headers=_bearer(key))
    assert untyped.status_code == 415 and "without a Content-Type" in untyped.json()["detail"]
    assert _experiments(api, key) == []

    accepted = httpx.post(
        f"{api.url}/v1/experiments",
        content=spec,
        headers={**_bearer(key), "Content-Type": "application/json; charset=utf-8"},
    )
    assert accepted.status_code == 202, accepted.text
    cancel = f"{api.url}/v1/experiments/{accepted.json()['id']}/cancel"
    # What an empty cross-site form sends: refused like any other non-JSON body.
    form = httpx.post(
        cancel, content=b"", headers={**_bearer(key), "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    assert _experiments(api, key)[0]["status"] == "queued"
    # curl -X POST .../cancel -H "Authorization: Bearer $KEY": no body, no Content-Type.
    cancelled = httpx.post(cancel, headers=_bearer(key))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


def test_a_request_from_another_origin_is_refused(served: tuple[Served, str]) -> None:
    api, key = served
    foreign = httpx.post(
        f"{api.url}/v1/experiments", json=small_spec(), headers={**_bearer(key), "Origin": "http://attacker.example"}
    )
    assert foreign.status_code == 403
    assert "cross-site" in foreign.json()["detail"]
    assert _experiments(api, key) == []
    own = httpx.post(f"{api.url}/v1/experiments", json=small_spec(), headers={**_bearer(key), "Origin": api.url})
    assert own.status_code == 202, own.text


def test_the_api_description_documents_the_refusals(served: tuple[Served, str]) -> None:
    api, _key = served
    paths = httpx.get(f"{api.url}/openapi.json").json()["paths"]
    submit = paths["/v1/experiments"]["post"]["responses"]
    assert "application/json" in submit["415"]["description"] and "403" in submit
    assert "GET and HEAD" in submit["401"]["description"]
    assert "application/zip" in paths["/v1/experiments/import"]["post"]["responses"]["415"]["description"]
    assert "415" in paths["/v1/experiments/{experiment_id}/cancel"]["post"]["responses"]
    assert "415" not in paths["/v1/experiments"]["get"]["responses"]
    assert (
        "Basic" in httpx.get(f"{api.url}/openapi.json").json()["components"]["securitySchemes"]["APIKey"]["description"]
    )


class DevToolsPipe:
    """Headless Chromium driven over --remote-debugging-pipe: JSON messages, NUL-terminated, on fds 3 and 4."""

    def __init__(self, profile: Path, arguments: Sequence[str] = ()) -> None:
        assert CHROMIUM is not None
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_pipes() -> None:
            # Copies above 9 first, so neither dup2 onto 3 or 4 can overwrite the other pipe's end.
            reading, writing = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write))
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        command += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        command += [
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            *arguments,
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command,
            pass_fds=(3, 4),
            preexec_fn=wire_pipes,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not answer; events so far: {self.events[-20:]}")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        decoded: dict[str, Any] = json.loads(message)
        return decoded

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page, once there is one) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + BROWSER_SECONDS
        while True:
            received = self._receive(deadline)
            if received.get("id") == self._next_id:
                assert "error" not in received, received
                result: dict[str, Any] = received.get("result", {})
                return result
            self.events.append(received)

    def wait_for(self, method: str, matches: Any = lambda _params: True) -> dict[str, Any]:
        """The first event (already received or still to come) named ``method`` whose params satisfy ``matches``."""
        deadline = time.monotonic() + BROWSER_SECONDS
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and matches(event.get("params", {})):
                    return dict(event["params"])
            seen = len(self.events)
            self.events.append(self._receive(deadline))

    def open_page(self) -> None:
        """Attach to the browser's page and turn on page and network events."""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(target for target in targets if target["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Network.enable")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_folder(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """The attacker's site: a static file server on another port, that is another origin."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


ATTACK_PAGE = """<!doctype html><html><body>
<form id="forged" method="POST" enctype="{enctype}" action="{action}">{fields}</form>
<script>document.getElementById("forged").submit();</script>
</body></html>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")
def test_cross_site_forms_in_chromium_after_a_basic_login_change_nothing(
    served: tuple[Served, str], tmp_path: Path
) -> None:
    api, key = served
    victim = _submit(api, key)
    # A text/plain form whose one field, sent as NAME=VALUE, reads as the JSON of a spec named "forged=";
    # and an empty form to cancel.
    fields = small_spec()
    del fields["name"]
    spec = json.dumps({**fields, "name": "forged"})
    field_name, field_value = spec[:-2], spec[-2:]
    attacks = tmp_path / "attacker"
    attacks.mkdir()
    (attacks / "create.html").write_text(
        ATTACK_PAGE.format(
            enctype="text/plain",
            action=f"{api.url}/v1/experiments",
            fields=f'<input type="hidden" name="{html.escape(field_name)}" value="{html.escape(field_value)}">',
        )
    )
    cancel_url = f"{api.url}/v1/experiments/{victim['id']}/cancel"
    (attacks / "cancel.html").write_text(
        ATTACK_PAGE.format(enctype="application/x-www-form-urlencoded", action=cancel_url, fields="")
    )
    attacker, attacker_url = _serve_folder(attacks)
    browser = DevToolsPipe(tmp_path / f"profile-{uuid.uuid4().hex}")
    try:
        browser.open_page()
        # The victim logs in to the dashboard: the browser now holds the key as Basic credentials for the site.
        host = api.url.removeprefix("http://")
        login = browser.call("Page.navigate", url=f"http://reader:{key}@{host}/")
        dashboard = browser.wait_for("Network.responseReceived", lambda p: p["requestId"] == login["loaderId"])
        assert dashboard["response"]["status"] == 200

        answers = {}
        for page, target in (("create.html", f"{api.url}/v1/experiments"), ("cancel.html", cancel_url)):
            browser.call("Page.navigate", url=f"{attacker_url}/{page}")
            sent = browser.wait_for(
                "Network.requestWillBeSent",
                lambda p, target=target: p["request"]["url"] == target and p["request"]["method"] == "POST",
            )
            answer = browser.wait_for(
                "Network.responseReceived", lambda p, sent=sent: p["requestId"] == sent["requestId"]
            )
            headers = browser.wait_for(
                "Network.requestWillBeSentExtraInfo", lambda p, sent=sent: p["requestId"] == sent["requestId"]
            )["headers"]
            answers[page] = (answer["response"]["status"], headers.get("Authorization", "").split(" ")[0])
    finally:
        browser.close()
        attacker.shutdown()
        attacker.server_close()

    # The browser did send both forged POSTs to the API, with the victim's saved Basic login; both were refused.
    assert all(400 <= status < 500 and scheme == "Basic" for status, scheme in answers.values()), answers
    [only] = _experiments(api, key)
    assert only["id"] == victim["id"] and only["status"] == "queued"
    log = api.log()
    assert (
        '"POST /v1/experiments HTTP/1.1" 4' in log and f'"POST /v1/experiments/{victim["id"]}/cancel HTTP/1.1" 4' in log
    )
