"""/docs (Swagger UI) and /redoc render from the service alone, with no CDN (issue 15 item 1).

The browser test drives headless Chromium over its DevTools pipe (tests.api.test_csrf.DevToolsPipe) against
a real uvicorn with authentication on, waits until the page has drawn the operations, and checks in the
DevTools network log that every request the page made went to the service, but for those the pages'
Content-Security-Policy stopped in the browser (ReDoc's Redocly logo from cdn.redoc.ly).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.meta.docs import ASSETS
from tests.api.served import serve_api
from tests.api.test_csrf import CHROMIUM, DevToolsPipe
from tests.fixtures import sqlite_copy

URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


def test_the_pages_and_their_assets_are_open_and_reference_nothing_outside_the_service(app: FastAPI) -> None:
    anonymous = TestClient(app)
    for page in ("/docs", "/redoc"):
        response = anonymous.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert URL.findall(response.text) == [], page
        assert "/openapi.json" in response.text
        for name in ASSETS:
            if name in response.text:
                assert f"/docs/assets/{name}" in response.text
    for name, media_type in ASSETS.items():
        asset = anonymous.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert len(asset.content) > 1000
    missing = anonymous.get("/docs/assets/secrets.txt")
    assert missing.status_code == 404 and "swagger-ui-bundle.js" in missing.json()["detail"]
    paths = anonymous.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc"))]


@pytest.fixture(scope="module")
def server(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("docs")
    database_url = sqlite_copy(migrated_template, workdir / "api.db")
    with serve_api(database_url=database_url, workdir=workdir, settings={"ACTLAB_AUTH_REQUIRED": "true"}) as url:
        yield url


# Resolves, once the page's DOM holds an element matching the selector, to the texts of all such elements.
WAIT_FOR_ELEMENTS = """
new Promise(resolve => {
  const texts = () => [...document.querySelectorAll(%s)].map(e => e.textContent.replace(/\\u200b/g, ""));
  const check = () => { if (texts().length) { observer.disconnect(); resolve(texts()); } };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true});
  check();
})
"""


def _render(browser: DevToolsPipe, url: str, selector: str) -> list[str]:
    """Open the page and wait until its scripts have drawn elements matching the selector; their texts."""
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired")
    result = browser.call(
        "Runtime.evaluate", expression=WAIT_FOR_ELEMENTS % repr(selector), awaitPromise=True, returnByValue=True
    )
    texts: list[str] = result["result"]["value"]
    return texts


def _requests_made(events: list[dict[str, Any]]) -> list[str]:
    """The URLs of the requests the browser sent, not counting those its Content-Security-Policy blocked."""
    blocked = {
        event["params"]["requestId"]
        for event in events
        if event.get("method") == "Network.loadingFailed" and event["params"].get("blockedReason") == "csp"
    }
    return [
        event["params"]["request"]["url"]
        for event in events
        if event.get("method") == "Network.requestWillBeSent" and event["params"]["requestId"] not in blocked
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")
def test_docs_and_redoc_render_the_operations_in_chromium_from_the_service_alone(server: str, tmp_path: Path) -> None:
    browser = DevToolsPipe(tmp_path / f"profile-{uuid.uuid4().hex}")
    try:
        browser.open_page()
        browser.call("Log.enable")
        swagger_paths = _render(browser, f"{server}/docs", ".opblock .opblock-summary-path")
        redoc_operations = _render(browser, f"{server}/redoc", "[data-section-id^='operation/']")
        redoc_text = browser.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
    finally:
        browser.close()

    assert "/v1/experiments" in swagger_paths and "/v1/experiments/{experiment_id}" in swagger_paths
    assert len(redoc_operations) >= len(set(swagger_paths))
    assert "/v1/experiments" in redoc_text["result"]["value"]
    requested = _requests_made(browser.events)
    assert f"{server}/docs/assets/swagger-ui-bundle.js" in requested
    assert f"{server}/docs/assets/redoc.standalone.js" in requested
    assert f"{server}/openapi.json" in requested
    elsewhere = [url for url in requested if not url.startswith((f"{server}/", "data:", "blob:"))]
    assert elsewhere == []
    # The policy stopped images of other sites only: nothing the pages need (inline scripts, styles, the worker).
    refusals = [
        event["params"]["entry"]["text"]
        for event in browser.events
        if event.get("method") == "Log.entryAdded" and event["params"]["entry"]["source"] == "security"
    ]
    assert all(text.startswith("Loading the image 'https://") for text in refusals), refusals
