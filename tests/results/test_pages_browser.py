"""The dashboard, the comparison page and the galleries in a real headless Chromium against a real uvicorn.

Driven over the DevTools pipe (tests.api.test_csrf.DevToolsPipe): a person ticks two experiments on the
dashboard and presses the compare button; the comparison page then holds one table row per (activation,
experiment) and its curves image; the galleries hold one section and one loaded image per activation. Every
request the pages made went to the service (the network log), and every image decoded (naturalWidth > 0).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.catalog import ACTIVATIONS
from app.db import make_engine, session_factory
from tests.api.served import serve_api
from tests.api.test_csrf import CHROMIUM, DevToolsPipe
from tests.fixtures import sqlite_copy
from tests.results.conftest import FAKE_SPEC, insert_experiment
from tests.results.test_compare import BETTER_RELU

# Ten seeds, so that relu's 0.03 on every seed is shown under Holm over the four comparisons.
SPEC = {**FAKE_SPEC, "seeds": list(range(10))}
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")

# What the page shows once loaded: the rows of its tables and, for every image, whether it decoded.
PAGE_STATE = """({
  url: location.href,
  dashboard: [...document.querySelectorAll('#experiments tbody tr')].map(row => ({
    id: row.dataset.experiment, best: row.querySelector('td.best').textContent.trim(),
    dataset: row.querySelector('td.dataset').textContent.trim()})),
  compared: [...document.querySelectorAll('#compare-table tbody tr')].map(row =>
    [...row.cells].map(cell => cell.textContent.trim())),
  sections: [...document.querySelectorAll('section.activation')].map(section => section.dataset.activation),
  images: [...document.images].map(image => [image.getAttribute('src'), image.complete && image.naturalWidth > 0]),
})"""


@pytest.fixture(scope="module")
def served(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A uvicorn serving two comparable experiments (newest first on the dashboard: 'init auto', 'init default')."""
    workdir = tmp_path_factory.mktemp("pages")
    database_url = sqlite_copy(migrated_template, workdir / "pages.db")
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        assert isinstance(session, Session)
        default = insert_experiment(session, spec_payload={**SPEC, "name": "init default"})
        # Submitted an hour later, so it is the newer one (equal times would order by random id).
        auto = insert_experiment(
            session,
            spec_payload={**SPEC, "name": "init auto"},
            arms=BETTER_RELU,
            created_at=datetime(2025, 11, 27, 11, 0, tzinfo=UTC),
        )
    engine.dispose()
    with serve_api(database_url=database_url, workdir=workdir, settings={"ACTLAB_AUTH_REQUIRED": "false"}) as url:
        yield url, [str(default), str(auto)]


def _state(browser: DevToolsPipe) -> dict[str, Any]:
    result = browser.call("Runtime.evaluate", expression=PAGE_STATE, returnByValue=True)
    value: dict[str, Any] = result["result"]["value"]
    return value


def _last_load(browser: DevToolsPipe) -> float:
    return max(
        (event["params"]["timestamp"] for event in browser.events if event.get("method") == "Page.loadEventFired"),
        default=0.0,
    )


def _wait_for_load(browser: DevToolsPipe, after: float) -> dict[str, Any]:
    """Wait for a load event (fired once every image has loaded or failed) later than ``after``: the page's state."""
    browser.wait_for("Page.loadEventFired", lambda params: params["timestamp"] > after)
    return _state(browser)


def _open(browser: DevToolsPipe, url: str) -> dict[str, Any]:
    after = _last_load(browser)
    browser.call("Page.navigate", url=url)
    return _wait_for_load(browser, after)


def test_compare_from_the_dashboard_and_the_galleries_render_in_chromium(
    served: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, (default, auto) = served
    browser = DevToolsPipe(tmp_path / f"profile-{uuid.uuid4().hex}")
    try:
        browser.open_page()
        dashboard = _open(browser, f"{url}/")
        assert [row["id"] for row in dashboard["dashboard"]] == [auto, default]
        assert [row["best"] for row in dashboard["dashboard"]] == ["relu", "prelu"]
        assert {row["dataset"] for row in dashboard["dashboard"]} == {"digits"}

        # A person ticks both experiments and presses the button: the form goes to /compare.
        after = _last_load(browser)
        browser.call(
            "Runtime.evaluate",
            expression="document.querySelectorAll('input[name=experiments]').forEach(box => box.click());"
            "document.querySelector('#compare-form button').click()",
        )
        compared = _wait_for_load(browser, after)
        assert "/compare?experiments=" in compared["url"]
        rows = compared["compared"]
        assert len(rows) == 2 * len(FAKE_SPEC["activations"])
        relu = [row for row in rows if row[0] == "relu"]
        assert [row[1] for row in relu] == ["init auto", "init default"]
        assert relu[0][-1] == "reference" and relu[1][-1] == "worse"
        assert compared["images"] and all(ok for _, ok in compared["images"]), compared["images"]

        gallery = _open(browser, f"{url}/experiments/{default}/gallery")
        assert gallery["sections"] == ["relu", "sigmoid", "prelu", "swish_b"]
        assert len(gallery["images"]) == 4 and all(ok for _, ok in gallery["images"]), gallery["images"]

        catalog = _open(browser, f"{url}/catalog/activations")
        assert len(catalog["sections"]) == len(ACTIVATIONS)
        assert len(catalog["images"]) == len(ACTIVATIONS) and all(ok for _, ok in catalog["images"])
    finally:
        browser.close()

    requested = [
        event["params"]["request"]["url"]
        for event in browser.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert any("/v1/compare/plots/learning-curves.png" in address for address in requested)
    assert [address for address in requested if not address.startswith((f"{url}/", "data:"))] == []
