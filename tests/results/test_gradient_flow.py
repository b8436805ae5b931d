"""Gradient flow that scales with depth: the layer x epoch map, the per-layer profile, their plots and endpoints,
the gradient-norm plot's shared scale and outside key, and the report's chart data and scripts."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app
from app.reports.assets import ASSETS, CACHE_CONTROL, REPORT_SCRIPTS
from app.results.colours import colour_of
from app.results.gradient_flow import gradient_heatmap, layer_profile, recorded_epochs
from app.results.gradient_flow_plots import gradient_heatmap_figure, layer_profile_figure
from app.results.plots import LEGEND_MAX_LAYERS, PlotData, gradient_norms_figure
from app.results.statistics import StatisticsError
from tests.fixtures import sqlite_copy
from tests.results.conftest import insert_experiment
from tests.results.synthetic import SyntheticArm, synthetic_tables

ARMS = [
    SyntheticArm("relu", "relu", 0.9, gradient_profile=(0.1, 0.5, 1.0), dead_fraction=0.25),
    SyntheticArm(
        "sigmoid", "sigmoid", 0.1, gradient_profile=(1e-6, 1e-3, 1.0), saturated_fraction=0.8, statuses={1: "failed"}
    ),
]


@pytest.fixture(scope="module")
def layers() -> pd.DataFrame:
    _runs, _metrics, layer_rows = synthetic_tables(ARMS, seeds=(0, 1, 2), epochs=3)
    # Seed s has 1 + s/10 times the arm's gradient norms, so the seeds' range is a band.
    layer_rows = layer_rows.assign(grad_norm=layer_rows["grad_norm"] * (1 + layer_rows["seed"] / 10))
    # Epoch 0, the network at initialisation, with a tenth of the trained gradient norms.
    initial = layer_rows[layer_rows["epoch"] == 1].assign(epoch=0, grad_norm=lambda rows: rows["grad_norm"] / 10)
    return pd.concat([initial, layer_rows], ignore_index=True)


def test_the_map_averages_log10_gradient_norms_over_the_seeds_that_trained(layers: pd.DataFrame) -> None:
    table = gradient_heatmap(layers)
    assert set(table["epoch"]) == {0, 1, 2, 3} and set(table["layer"]) == {1, 2, 3}
    sigmoid_first = table[(table["activation"] == "sigmoid") & (table["layer"] == 1) & (table["epoch"] == 2)]
    assert sigmoid_first["log10_grad_norm"].item() == pytest.approx(math.log10(0.5e-6) + math.log10(1.2) / 2)
    # The failed seed of sigmoid has no place in the map.
    assert sigmoid_first["n"].item() == 2
    initial = table[(table["activation"] == "relu") & (table["layer"] == 3) & (table["epoch"] == 0)]
    assert initial["log10_grad_norm"].item() == pytest.approx(math.log10(0.05) + math.log10(1.32) / 3)


def test_the_profile_defaults_to_the_last_epoch_and_takes_epoch_0_and_the_fractions(layers: pd.DataFrame) -> None:
    assert recorded_epochs(layers) == [0, 1, 2, 3]
    last = layer_profile(layers, metric="grad_norm", epoch=None)
    assert set(last["epoch"]) == {3}
    relu = last[last["activation"] == "relu"].sort_values("layer")
    # The geometric mean over the seeds, with the seeds' range.
    assert relu["mean"].tolist() == pytest.approx([value * 1.32 ** (1 / 3) for value in (0.05, 0.25, 0.5)])
    assert relu["seed_min"].tolist() == pytest.approx([0.05, 0.25, 0.5])
    assert relu["seed_max"].tolist() == pytest.approx([0.06, 0.3, 0.6])
    initial = layer_profile(layers, metric="grad_norm", epoch=0)
    assert initial[initial["activation"] == "relu"]["seed_min"].tolist() == pytest.approx([0.005, 0.025, 0.05])
    dead = layer_profile(layers, metric="dead_fraction", epoch=2)
    assert dead["activation"].unique().tolist() == ["relu"]
    assert dead["mean"].tolist() == pytest.approx([0.25, 0.25])


def test_a_bad_metric_or_epoch_names_the_parameter_and_the_allowed_values(layers: pd.DataFrame) -> None:
    with pytest.raises(StatisticsError, match="grad_norm, dead_fraction, saturated_fraction") as metric:
        layer_profile(layers, metric="weight_norm", epoch=None)
    assert metric.value.field == "metric"
    gappy = layers[layers["epoch"] != 2]
    with pytest.raises(StatisticsError, match=r"recorded epochs: 0\.\.1, 3") as epoch:
        layer_profile(gappy, metric="grad_norm", epoch=2)
    assert epoch.value.field == "epoch"


def _boxes(figure: Figure) -> tuple[list[object], list[object]]:
    FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    figure.draw(renderer)
    axes = [axis.get_window_extent(renderer) for axis in figure.axes if axis.get_label() != "<colorbar>"]
    keys = [legend.get_window_extent(renderer) for legend in figure.legends]
    return axes, keys


def _deep(depth: int) -> pd.DataFrame:
    profile = tuple(10.0 ** (-6 * (depth - layer) / (depth - 1)) for layer in range(1, depth + 1))
    arms = [SyntheticArm(label, label, 0.5, gradient_profile=profile) for label in ("relu", "tanh", "sigmoid")]
    return synthetic_tables(arms, seeds=(0, 1), epochs=3)[2]


@pytest.mark.parametrize("depth", [3, 20])
def test_the_gradient_norm_panels_share_one_scale_and_keep_their_key_outside(depth: int) -> None:
    data = PlotData(metrics=pd.DataFrame(), layer_metrics=_deep(depth), summary=pd.DataFrame())
    figure = gradient_norms_figure(data)
    panels = [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]
    assert len({axes.get_ylim() for axes in panels}) == 1
    axes_boxes, legend_boxes = _boxes(figure)
    if depth <= LEGEND_MAX_LAYERS:
        assert len(legend_boxes) == 1
        assert not any(legend_boxes[0].overlaps(box) for box in axes_boxes)  # type: ignore[attr-defined]
        assert all(not axes.get_legend() for axes in panels)
    else:
        assert legend_boxes == [] and any(axes.get_label() == "<colorbar>" for axes in figure.axes)


def test_the_static_map_and_profile_of_a_deep_net_share_one_colour_scale_and_an_outside_legend() -> None:
    deep = _deep(20)
    heatmap = gradient_heatmap_figure(deep)
    panels = [axes for axes in heatmap.axes if axes.get_label() != "<colorbar>"]
    meshes = [collection for axes in panels for collection in axes.collections]
    assert len(meshes) == 3 and len({mesh.get_clim() for mesh in meshes}) == 1
    assert meshes[0].get_clim() == pytest.approx((math.log10(0.5e-6), math.log10(0.5)))
    profile = layer_profile_figure(deep, metric="grad_norm", epoch=None)
    axes_boxes, legend_boxes = _boxes(profile)
    assert len(legend_boxes) == 1 and not legend_boxes[0].overlaps(axes_boxes[0])  # type: ignore[attr-defined]
    lines = {line.get_label(): line.get_color() for line in profile.axes[0].get_lines()}
    assert lines == {label: colour_of(label) for label in ("relu", "tanh", "sigmoid")}


def test_the_gradient_flow_endpoints_answer_tables_images_and_422s(client: TestClient, db: Session) -> None:
    experiment_id = insert_experiment(db)
    base = f"/v1/experiments/{experiment_id}"
    heatmap = client.get(f"{base}/gradient-flow", params={"format": "json"})
    assert heatmap.status_code == 200
    rows = heatmap.json()
    assert {row["activation"] for row in rows} == {"relu", "sigmoid", "prelu", "swish_b"}
    assert all(row["experiment_id"] == str(experiment_id) for row in rows)
    profile = client.get(f"{base}/gradient-flow", params={"view": "profile", "metric": "saturated_fraction"})
    assert {(row["activation"], row["epoch"]) for row in profile.json()} == {("sigmoid", 4)}
    csv = client.get(f"{base}/gradient-flow", params={"view": "profile", "epoch": 2, "format": "csv"})
    assert csv.status_code == 200 and csv.text.splitlines()[0].endswith("n,mean,seed_min,seed_max")

    curves = client.get(f"{base}/learning-curves").json()
    assert {row["metric"] for row in curves} == {"train_loss", "test_loss", "train_accuracy", "test_accuracy"}
    assert all(row["ci_low"] <= row["mean"] <= row["ci_high"] for row in curves if row["ci_low"] is not None)

    for path in ("plots/gradient-heatmap.png", "plots/layer-profile.png", "plots/layer-profile.svg?epoch=1"):
        image = client.get(f"{base}/{path}")
        assert image.status_code == 200, path
        if path.endswith(".png"):
            pixels = matplotlib.image.imread(io.BytesIO(image.content), format="png")
            assert float(pixels[..., :3].std()) > 0.02
    dead = client.get(f"{base}/plots/layer-profile.png", params={"metric": "dead_fraction"})
    assert dead.status_code == 200

    for path, params, where, allowed in (
        ("gradient-flow", {"view": "profile", "metric": "weight_norm"}, ["query", "metric"], "dead_fraction"),
        ("gradient-flow", {"view": "map"}, ["query", "view"], "heatmap"),
        ("gradient-flow", {"view": "profile", "epoch": 9}, "query.epoch", "recorded epochs: 1..4"),
        ("plots/layer-profile.png", {"epoch": 9}, "query.epoch", "recorded epochs: 1..4"),
        ("plots/layer-profile.png", {"metric": "loss"}, ["query", "metric"], "saturated_fraction"),
        ("plots/layer-profile.jpg", {}, ["path", "image_format"], "'svg'"),
        ("plots/gradient-heatmap.gif", {}, "path.filename", "png, svg"),
    ):
        response = client.get(f"{base}/{path}", params=params)
        assert response.status_code == 422, (path, params)
        detail = response.json()["detail"]
        assert any(error["loc"] in (where, ".".join(where)) and allowed in error["msg"] for error in detail), detail


def test_the_report_draws_from_the_api_tables_with_the_app_s_own_scripts(client: TestClient, db: Session) -> None:
    experiment_id = insert_experiment(db)
    page = client.get(f"/experiments/{experiment_id}").text
    assert re.findall(r'data-chart="([^"]+)"', page) == ["learning-curves", "gradient-heatmap", "layer-profile"]
    found = re.search(r'<script type="application/json" id="report-charts">(.*?)</script>', page, re.DOTALL)
    assert found is not None
    charts = json.loads(found.group(1))
    assert charts["colours"] == {label: colour_of(label) for label in ("relu", "sigmoid", "prelu", "swish_b")}
    assert charts["chance"] == pytest.approx(0.1) and charts["epochs"] == [1, 2, 3, 4]
    for url in charts["tables"].values():
        assert client.get(url).status_code == 200, url
    scripts = re.findall(r'<script src="([^"]+)"></script>', page)
    assert [script.split("?")[0] for script in scripts] == [f"/assets/{name}" for name in REPORT_SCRIPTS]
    assert not re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", page)


def test_the_scripts_are_open_and_cached_for_a_year_under_a_content_fingerprint(
    tmp_path: Path, migrated_template: Path
) -> None:
    settings = Settings(
        DATABASE_URL=sqlite_copy(migrated_template, tmp_path / "keys.db"),
        BROKER_URL="filesystem://",
        broker_folder=tmp_path / "broker",
        auth_required=True,
    )
    anonymous = TestClient(create_app(settings))
    for name in ASSETS:
        response = anonymous.get(f"/assets/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
        assert response.headers["cache-control"] == CACHE_CONTROL
    plotly = anonymous.get(f"/assets/{REPORT_SCRIPTS[0]}").text
    assert plotly.lstrip().startswith("/**\n* plotly.js (cartesian - minified) v4.1.1")
    missing = anonymous.get("/assets/app.db")
    assert missing.status_code == 404 and "report-plots.js" in missing.json()["detail"]
    assert anonymous.get("/v1/experiments").status_code == 401
