"""The report's interactive plots of a 20-layer experiment, in headless Chromium with the network off.

A real uvicorn serves a SQLite database holding a 20-layer MLP experiment (four activations, three seeds,
inserted through the ORM as the other report tests do) with API keys required; Chromium opens the report with
the key as its Basic password, as a person answering the login prompt would, and its only route out is a
proxy at a closed loopback port, so a request to any other host fails. The test waits until the page's
scripts have drawn every chart, then asserts on the rendered DOM: one plotly trace per activation in each
chart, the legend and the colour bar outside every plot area, the activations' fixed colours, the chance line
and the accuracy axis, a legend click hiding an activation, the log switch, hover text, and that every request
the browser made went to the service.
"""

from __future__ import annotations

import base64
import io
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import matplotlib.image
import pytest
from sqlalchemy.orm import Session

from app.db import make_engine, session_factory
from app.reports.assets import REPORT_SCRIPTS
from app.results.colours import colour_of
from app.results.failures import chance_accuracy
from tests.api.served import create_key, serve_api
from tests.api.test_csrf import CHROMIUM, DevToolsPipe
from tests.fixtures import sqlite_copy
from tests.results.conftest import insert_experiment
from tests.results.synthetic import SyntheticArm

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install -y chromium")

DEPTH = 20
DEEP_SPEC: dict[str, Any] = {
    "name": "twenty layers",
    "dataset": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [16] * (DEPTH - 1)},
    "activations": ["relu", "tanh", "sigmoid", "gelu"],
    "seeds": [0, 1, 2],
    "training": {"epochs": 6},
    "device": "cpu",
}


def _vanishing(decades: float) -> tuple[float, ...]:
    """Gradient norms per layer falling by ``decades`` orders of magnitude from the output to the input."""
    return tuple(10 ** (-decades * (DEPTH - layer) / (DEPTH - 1)) for layer in range(1, DEPTH + 1))


DEEP_ARMS = [
    SyntheticArm("relu", "relu", 0.85, gradient_profile=_vanishing(1.0), dead_fraction=0.3),
    SyntheticArm("tanh", "tanh", 0.80, gradient_profile=_vanishing(2.5), saturated_fraction=0.4),
    SyntheticArm("sigmoid", "sigmoid", 0.11, gradient_profile=_vanishing(7.0), saturated_fraction=0.9),
    SyntheticArm("gelu", "gelu", 0.86, gradient_profile=_vanishing(0.8), dead_fraction=0.0),
]
LABELS = [arm.label for arm in DEEP_ARMS]
# Every non-loopback request goes to this proxy, which nothing answers: the browser's network is off.
NETWORK_OFF = ("--proxy-server=http://127.0.0.1:9", "--window-size=1280,900")


@pytest.fixture(scope="module")
def served(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(server URL, experiment id, API key) of a served 20-layer experiment with keys required."""
    workdir = tmp_path_factory.mktemp("interactive")
    database_url = sqlite_copy(migrated_template, workdir / "report.db")
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        assert isinstance(session, Session)
        experiment_id = insert_experiment(session, spec_payload=DEEP_SPEC, arms=DEEP_ARMS, status="succeeded")
    engine.dispose()
    key = create_key(database_url, name="reader", admin=True)
    with serve_api(database_url=database_url, workdir=workdir, settings={"ACTLAB_AUTH_REQUIRED": "true"}) as url:
        yield url, str(experiment_id), key


# Resolves, once every figure with an interactive chart has data-drawn set, to what each chart shows.
CHARTS_DRAWN = """
new Promise(resolve => {
  const figures = () => [...document.querySelectorAll("figure[data-chart]")];
  const box = element => { if (!element) return null; const r = element.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const summary = () => figures().map(figure => {
    const chart = figure.querySelector(".js-plotly-plot");
    return {
      kind: figure.dataset.chart, drawn: figure.dataset.drawn, text: figure.textContent.slice(0, 400),
      links: [...figure.querySelectorAll("figcaption a")].map(link => link.getAttribute("href")),
      image_hidden: figure.querySelector("img.static-plot").hidden,
      traces: chart ? chart.data.map(trace => ({name: trace.name, type: trace.type || "scatter",
        legend: trace.showlegend !== false, colour: trace.line ? trace.line.color : null})) : [],
      legend: box(chart && chart.querySelector(".legend")),
      colour_bar: box(chart && chart.querySelector(".colorbar")),
      plot_areas: chart ? [...chart.querySelectorAll(".nsewdrag")].map(box) : [],
      layout: chart ? {y3: chart.layout.yaxis3 || null, coloraxis: chart.layout.coloraxis || null} : null,
    };
  });
  const check = () => {
    if (figures().length && figures().every(figure => figure.dataset.drawn)) {
      observer.disconnect(); resolve(summary());
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {attributes: true, childList: true, subtree: true});
  check();
})
"""


def _evaluate(browser: DevToolsPipe, expression: str, *, wait: bool = False) -> Any:
    result = browser.call("Runtime.evaluate", expression=expression, awaitPromise=wait, returnByValue=True)
    assert "exceptionDetails" not in result, result
    return result["result"].get("value")


def _overlaps(first: dict[str, float], second: dict[str, float]) -> bool:
    return (
        first["left"] < second["right"]
        and second["left"] < first["right"]
        and first["top"] < second["bottom"]
        and second["top"] < first["bottom"]
    )


def _click(browser: DevToolsPipe, x: float, y: float) -> None:
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def _legend_item(browser: DevToolsPipe, kind: str, label: str) -> tuple[float, float]:
    """The centre of a legend entry of the chart, scrolled into view, in viewport coordinates."""
    found = _evaluate(
        browser,
        f"""(() => {{
          const chart = document.querySelector("figure[data-chart={kind}] .js-plotly-plot");
          const item = [...chart.querySelectorAll(".legend .traces")].find(e => e.textContent === {json.dumps(label)});
          item.scrollIntoView({{block: "center"}});
          const r = item.querySelector(".legendtoggle").getBoundingClientRect();
          return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""",
    )
    return float(found[0]), float(found[1])


def test_the_report_of_a_20_layer_experiment_draws_interactive_plots_offline(
    served: tuple[str, str, str], tmp_path: Path
) -> None:
    url, experiment_id, key = served
    page = url.replace("http://", f"http://reader:{key}@") + f"/experiments/{experiment_id}"
    browser = DevToolsPipe(tmp_path / f"profile-{uuid.uuid4().hex}", arguments=NETWORK_OFF)
    try:
        browser.open_page()
        browser.call("Page.navigate", url=page)
        browser.wait_for("Page.loadEventFired")
        charts = {chart["kind"]: chart for chart in _evaluate(browser, CHARTS_DRAWN, wait=True)}

        # A legend click hides an activation in all four learning-curve panels.
        x, y = _legend_item(browser, "learning-curves", "sigmoid")
        _click(browser, x, y)
        hidden = _evaluate(
            browser,
            """new Promise(resolve => { const chart = document.querySelector(
                 "figure[data-chart=learning-curves] .js-plotly-plot");
               const state = () => chart.data.filter(t => t.legendgroup === "sigmoid").map(t => t.visible);
               if (state().every(v => v === "legendonly")) { resolve(state()); return; }
               chart.on("plotly_restyle", () => resolve(state())); })""",
            wait=True,
        )
        # The log switch turns both loss axes to a log scale.
        axis_types = _evaluate(
            browser,
            """new Promise(resolve => { const figure = document.querySelector("figure[data-chart=learning-curves]");
               const chart = figure.querySelector(".js-plotly-plot");
               chart.once("plotly_relayout", () => resolve([chart.layout.yaxis.type, chart.layout.yaxis2.type]));
               figure.querySelector("input.log-scale").click(); })""",
            wait=True,
        )
        # Hovering the first layer of relu's profile shows its value.
        point = _evaluate(
            browser,
            """(() => { const chart = document.querySelector("figure[data-chart=layer-profile] .js-plotly-plot");
               chart.scrollIntoView({block: "center"});
               const trace = chart.data.findIndex(t => t.name === "relu");
               const layout = chart._fullLayout, box = chart.getBoundingClientRect();
               const x = layout.xaxis.l2p(chart.data[trace].x[0]) + layout.xaxis._offset + box.left;
               const y = layout.yaxis.l2p(layout.yaxis.d2l(chart.data[trace].y[0])) + layout.yaxis._offset + box.top;
               return [x, y]; })()""",
        )
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=point[0], y=point[1])
        hover_text = _evaluate(
            browser,
            """new Promise(resolve => {
              const chart = document.querySelector("figure[data-chart=layer-profile] .js-plotly-plot");
              const text = () => chart.querySelector(".hoverlayer").textContent;
              if (text()) { resolve(text()); return; }
              chart.once("plotly_hover", () => requestAnimationFrame(() => resolve(text()))); })""",
            wait=True,
        )

        height = _evaluate(browser, "document.documentElement.scrollHeight")
        browser.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=int(height), deviceScaleFactor=1, mobile=False
        )
        shot = browser.call("Page.captureScreenshot", format="png")
    finally:
        browser.close()

    screenshot = tmp_path / "report-20-layers.png"
    print(f"screenshot: {screenshot}")
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    pixels = matplotlib.image.imread(io.BytesIO(screenshot.read_bytes()), format="png")
    assert pixels.shape[0] >= 2000 and float(pixels[..., :3].std()) > 0.02

    assert set(charts) == {"learning-curves", "gradient-heatmap", "layer-profile"}
    for kind, chart in charts.items():
        assert chart["drawn"] == "yes", (kind, chart["text"])
        assert chart["image_hidden"], kind
        areas = chart["plot_areas"]
        assert areas, kind
        for key_box in (chart["legend"], chart["colour_bar"]):
            if key_box is not None:
                assert not any(_overlaps(key_box, area) for area in areas), (kind, key_box, areas)

    curves = charts["learning-curves"]
    assert len(curves["plot_areas"]) == 4 and curves["legend"] is not None
    in_legend = [trace["name"] for trace in curves["traces"] if trace["legend"]]
    assert in_legend == [*LABELS, "chance"]
    for trace in curves["traces"]:
        if trace["name"] in LABELS:
            assert trace["colour"] == colour_of(trace["name"])
    chance = chance_accuracy(classes=10)
    assert chance is not None
    low, high = curves["layout"]["y3"]["range"]
    assert low <= chance and high >= 0.86 and high - low >= 0.25 * (1 - chance)

    heatmap = charts["gradient-heatmap"]
    assert [trace["name"] for trace in heatmap["traces"] if trace["type"] == "heatmap"] == LABELS
    assert len(heatmap["plot_areas"]) == len(LABELS) and heatmap["colour_bar"] is not None
    colour_scale = heatmap["layout"]["coloraxis"]
    assert math.isclose(colour_scale["cmin"], -7 + math.log10(0.5), abs_tol=1e-6)
    assert math.isclose(colour_scale["cmax"], math.log10(0.5), abs_tol=1e-6)

    profile = charts["layer-profile"]
    assert [trace["name"] for trace in profile["traces"] if trace["legend"]] == LABELS
    assert profile["legend"] is not None
    # Its static links draw the metric and epoch on show: gradient norm at the last epoch.
    assert [link.rsplit("/", 1)[1] for link in profile["links"]] == [
        f"layer-profile.{image_format}?metric=grad_norm&epoch=6" for image_format in ("svg", "png")
    ]

    assert hidden == ["legendonly"] * 8
    assert axis_types == ["log", "log"]
    assert "relu" in hover_text and "layer 1" in hover_text

    requested = [
        event["params"]["request"]["url"]
        for event in browser.events
        if event.get("method") == "Network.requestWillBeSent"
    ]
    assert any(f"/assets/{REPORT_SCRIPTS[0]}?v=" in request for request in requested)
    assert any(f"/v1/experiments/{experiment_id}/gradient-flow?view=profile" in request for request in requested)
    assert any(f"/v1/experiments/{experiment_id}/learning-curves" in request for request in requested)
    service = urlsplit(url)
    elsewhere = [
        request
        for request in requested
        if urlsplit(request).scheme not in ("data", "blob")
        and (urlsplit(request).hostname, urlsplit(request).port) != (service.hostname, service.port)
    ]
    assert elsewhere == []
