"""The report's layout at 1280 px in a real headless Chromium (issue 15 item 7), measured on the rendered page.

Driven over the DevTools pipe (tests.api.test_csrf.DevToolsPipe) with the viewport set to 1280 x 900: the
page never scrolls sideways (the results table fits its panel or scrolls inside it), a cancelled
experiment's bar and sentence say where it stopped, every section has something drawn in it (tables with
rows, images that decoded) and a raised diagnostics flag is painted differently from a lowered one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.db import make_engine, session_factory
from tests.api.served import serve_api
from tests.api.test_csrf import CHROMIUM, DevToolsPipe
from tests.fixtures import sqlite_copy
from tests.results.conftest import insert_experiment

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")
WIDTH = 1280

# What the layout checks read from the rendered page.
LAYOUT = """(() => {
  const box = element => element.getBoundingClientRect();
  const table = document.querySelector('#results-table');
  const panel = table.parentElement;
  const sections = [...document.querySelectorAll('main h2')].map(heading => {
    const parts = [];
    for (let node = heading.nextElementSibling; node && node.tagName !== 'H2'; node = node.nextElementSibling) {
      parts.push(node);
    }
    const images = parts.flatMap(node => node.tagName === 'IMG' ? [node] : [...node.querySelectorAll('img')]);
    const rows = parts.flatMap(node => [...node.querySelectorAll('tbody tr')]);
    const text = parts.map(node => node.innerText.trim()).join(' ');
    return {heading: heading.textContent.trim(), text: text.length, rows: rows.length,
            images: images.length, broken: images.filter(image => !(image.complete && image.naturalWidth > 0)).length,
            height: parts.reduce((sum, node) => sum + box(node).height, 0)};
  });
  const flag = document.querySelector('#diagnostics-table td.flag-raised');
  const plain = [...document.querySelectorAll('#diagnostics-table td')].find(cell => cell.textContent.trim() === 'no');
  return {
    viewport: window.innerWidth,
    page: document.documentElement.scrollWidth,
    table: {right: box(table).right, width: table.scrollWidth},
    panel: {right: box(panel).right, client: panel.clientWidth, scroll: panel.scrollWidth,
            overflow: getComputedStyle(panel).overflowX, className: panel.className},
    progress: {value: document.querySelector('#progress').value,
               text: document.querySelector('#progress-text').textContent.trim()},
    sections: sections,
    flag: flag && {text: flag.textContent.trim(), background: getComputedStyle(flag).backgroundColor,
                   weight: getComputedStyle(flag).fontWeight},
    plain: plain && {background: getComputedStyle(plain).backgroundColor, weight: getComputedStyle(plain).fontWeight},
  };
})()"""


@pytest.fixture(scope="module")
def served(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A uvicorn serving one cancelled experiment (sigmoid's runs vanish, diverge and stop early)."""
    workdir = tmp_path_factory.mktemp("layout")
    database_url = sqlite_copy(migrated_template, workdir / "layout.db")
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        assert isinstance(session, Session)
        cancelled = insert_experiment(session, status="cancelled")
    engine.dispose()
    with serve_api(database_url=database_url, workdir=workdir, settings={"ACTLAB_AUTH_REQUIRED": "false"}) as url:
        yield url, str(cancelled)


def _layout(browser: DevToolsPipe, url: str, width: int) -> dict[str, Any]:
    browser.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
    loads = [event for event in browser.events if event.get("method") == "Page.loadEventFired"]
    after = max((event["params"]["timestamp"] for event in loads), default=0.0)
    browser.call("Page.navigate", url=url)
    browser.wait_for("Page.loadEventFired", lambda params: params["timestamp"] > after)
    value: dict[str, Any] = browser.call("Runtime.evaluate", expression=LAYOUT, returnByValue=True)["result"]["value"]
    return value


def _fits_or_scrolls(layout: dict[str, Any]) -> bool:
    """The results table ends inside its panel, or its panel scrolls sideways to show the rest."""
    panel, table = layout["panel"], layout["table"]
    if table["right"] <= panel["right"] + 1:
        return True
    return panel["scroll"] > panel["client"] and panel["overflow"] in ("auto", "scroll")


def test_the_report_at_1280_px_has_no_sideways_page_says_where_it_was_cancelled_and_fills_every_panel(
    served: tuple[str, str], tmp_path: Path
) -> None:
    url, experiment_id = served
    browser = DevToolsPipe(tmp_path / f"profile-{uuid.uuid4().hex}")
    try:
        browser.open_page()
        layout = _layout(browser, f"{url}/experiments/{experiment_id}", WIDTH)
    finally:
        browser.close()

    assert layout["viewport"] == WIDTH
    assert layout["page"] <= WIDTH, layout
    assert _fits_or_scrolls(layout), layout

    # 4 activations x 6 seeds x 4 epochs planned; the runs trained 86 of them before the cancel.
    assert layout["progress"] == {"value": 90, "text": "cancelled at 86 of 96 epochs, 24 of 24 runs finished"}

    assert len(layout["sections"]) >= 5
    for section in layout["sections"]:
        assert section["height"] > 0 and (section["text"] > 0 or section["images"] > 0), section
        assert section["broken"] == 0, section
    drawn = {section["heading"]: section for section in layout["sections"]}
    assert drawn["Results"]["rows"] == 4

    flag, plain = layout["flag"], layout["plain"]
    assert flag is not None and plain is not None, layout
    assert flag["text"] == "yes"
    assert flag["background"] != plain["background"] and int(flag["weight"]) > int(plain["weight"])
