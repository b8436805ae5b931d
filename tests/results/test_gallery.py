"""The activation gallery: f and f' per activation from numpy, for an experiment and for one catalog entry."""

from __future__ import annotations

import io
import uuid
import xml.etree.ElementTree as ElementTree

import matplotlib.image
import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from app.results.gallery import gallery_figure
from app.spec import ActivationSpec


def test_gallery_draws_value_and_derivative_rows_with_learned_layers() -> None:
    activations = {
        "relu": ActivationSpec(name="relu"),
        "prelu": ActivationSpec(name="prelu"),
        "dyrelu": ActivationSpec(name="dyrelu"),
    }
    learned = pd.DataFrame(
        [
            {
                "activation": "prelu",
                "activation_index": 1,
                "layer": 0,
                "layer_name": "hidden.0",
                "parameters": {"slope": 0.5},
            }
        ]
    )
    figure = gallery_figure(activations, learned_by_layer=learned)
    panels = figure.axes
    assert len(panels) == 6
    relu_value, relu_slope = panels[0].get_lines()[0], panels[1].get_lines()[0]
    x = np.asarray(relu_value.get_xdata())
    np.testing.assert_allclose(relu_value.get_ydata(), np.maximum(x, 0.0))
    np.testing.assert_array_equal(relu_slope.get_ydata(), np.where(x > 0, 1.0, 0.0))
    # prelu: the start (slope 0.25, dashed) and the learned layer (slope 0.5), value and derivative.
    labels = [line.get_label() for line in panels[3].get_lines()]
    assert labels[:2] == ["start", "learned, hidden.0"]
    learned_slope = np.asarray(panels[3].get_lines()[1].get_ydata())
    assert set(np.unique(learned_slope)) == {0.5, 1.0}
    assert "fixed context" in " ".join(text.get_text() for text in panels[4].texts)


def test_experiment_gallery_has_one_row_per_activation(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/plots/activations.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = matplotlib.image.imread(io.BytesIO(response.content))
    assert image.shape[0] == round((2.9 * 4 + 0.6) * 100)  # four activations in the fake spec
    assert image[..., :3].std() > 0.01
    svg = client.get(f"/v1/experiments/{finished_experiment}/plots/activations.svg")
    assert svg.status_code == 200
    assert ElementTree.fromstring(svg.content).tag.endswith("svg")


def test_catalog_activation_plot(client: TestClient) -> None:
    for name in ("gelu", "meta_acon", "swish"):
        response = client.get(f"/v1/catalog/activations/{name}/plot.svg")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("image/svg+xml")
    custom = client.get("/v1/catalog/activations/custom/plot.png", params={"expression": "x * tanh(x)"})
    assert custom.status_code == 200
    assert custom.headers["content-type"] == "image/png"


def test_catalog_activation_plot_rejects_bad_input_naming_the_field(client: TestClient) -> None:
    unknown = client.get("/v1/catalog/activations/nope/plot.svg")
    assert unknown.status_code == 422
    assert "unknown activation 'nope'" in unknown.text and "relu" in unknown.text
    assert client.get("/v1/catalog/activations/relu/plot.gif").status_code == 422
    assert "plot.svg" in client.get("/v1/catalog/activations/relu/shape.svg").text
    missing = client.get("/v1/catalog/activations/custom/plot.svg")
    assert missing.status_code == 422
    assert "expression" in missing.text
