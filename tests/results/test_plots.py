"""Plots are valid PNG and SVG images; learned-function curves are computed right."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ElementTree

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from scipy import special

from app.expressions import parse_expression
from app.results.diagnostics import learned_parameters_by_layer
from app.results.functions import evaluate_expression, learned_shape, pade, starting_shape
from app.results.plots import PLOT_KINDS, PlotData, plot
from app.results.statistics import ResultOptions, run_summaries, summarise_activations
from app.spec import ActivationSpec
from tests.results.synthetic import SyntheticArm, synthetic_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot_data() -> PlotData:
    arms = [
        SyntheticArm("relu", "relu", 0.9, dead_fraction=0.2),
        SyntheticArm("tanh", "tanh", 0.8, saturated_fraction=0.3, statuses={2: "diverged"}),
        SyntheticArm("prelu", "prelu", 0.9, parameters={"slope": 0.1}),
        SyntheticArm("swish_b", "custom", 0.9, parameters={"beta": 1.7}),
    ]
    runs, metrics, layers = synthetic_tables(arms, seeds=range(3))
    options = ResultOptions()
    return PlotData(
        metrics=metrics,
        layer_metrics=layers,
        summary=summarise_activations(metrics, options=options, runs=runs),
        activations={
            "relu": ActivationSpec(name="relu"),
            "tanh": ActivationSpec(name="tanh"),
            "prelu": ActivationSpec(name="prelu"),
            "swish_b": ActivationSpec(
                name="custom", expression="x * sigmoid(beta * x)", learnable={"beta": 1.0}, label="swish_b"
            ),
        },
        learned_by_layer=learned_parameters_by_layer(layers),
        run_values=run_summaries(metrics, options=options, runs=runs),
        title="synthetic",
    )


def _assert_png(content: bytes) -> np.ndarray:
    assert content.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(content), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def _assert_svg(content: bytes) -> None:
    root = ElementTree.fromstring(content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize("kind", sorted(PLOT_KINDS))
def test_every_plot_is_a_valid_non_blank_png_and_svg(kind: str, plot_data: PlotData) -> None:
    image = _assert_png(plot(kind, data=plot_data, image_format="png"))
    # Something is drawn: not a single flat colour.
    assert float(image[..., :3].std()) > 0.01
    _assert_svg(plot(kind, data=plot_data, image_format="svg"))


def test_svg_is_byte_identical_for_the_same_data(plot_data: PlotData) -> None:
    first = plot("final-metric", data=plot_data, image_format="svg")
    assert first == plot("final-metric", data=plot_data, image_format="svg")


@pytest.mark.parametrize("kind", sorted(PLOT_KINDS))
def test_an_experiment_without_data_still_gets_valid_images(kind: str) -> None:
    empty = PlotData(metrics=pd.DataFrame(), layer_metrics=pd.DataFrame(), summary=pd.DataFrame(columns=["n"]))
    _assert_png(plot(kind, data=empty, image_format="png"))


def test_unknown_kind_and_format_are_rejected_with_the_allowed_values(plot_data: PlotData) -> None:
    with pytest.raises(ValueError, match="plot kind must be one of learning-curves"):
        plot("histogram", data=plot_data, image_format="png")
    with pytest.raises(ValueError, match="image format must be one of png, svg"):
        plot("final-metric", data=plot_data, image_format="jpeg")


def test_expression_evaluator_matches_numpy() -> None:
    x = np.linspace(-3, 3, 13)
    tree = parse_expression("max(x, 0) + a * tanh(x) ** 2 - sqrt(abs(x)) / (1 + exp(-x))", ["a"])
    expected = np.maximum(x, 0) + 0.5 * np.tanh(x) ** 2 - np.sqrt(np.abs(x)) / (1 + np.exp(-x))
    assert evaluate_expression(tree, x, {"a": 0.5}) == pytest.approx(expected)


def test_learned_and_starting_shapes_of_learnable_activations() -> None:
    x = np.array([-2.0, -0.5, 0.0, 1.5])
    prelu = ActivationSpec(name="prelu", params={"init": 0.3})
    assert starting_shape(prelu, x) == pytest.approx([-0.6, -0.15, 0.0, 1.5])
    assert learned_shape(prelu, {"slope": 0.1}, x) == pytest.approx([-0.2, -0.05, 0.0, 1.5])
    assert learned_shape(prelu, {"slope_mean": 0.2, "slope_std": 0.1}, x) == pytest.approx([-0.4, -0.1, 0.0, 1.5])
    swish = ActivationSpec(name="swish_beta")
    assert learned_shape(swish, {"beta": 2.0}, x) == pytest.approx(x * special.expit(2.0 * x))
    pau = ActivationSpec(name="pau")
    coefficients = {"a0": 0.1, "a1": 1.0, "a2": 0.5, "a3": 0, "a4": 0, "a5": 0, "b1": -1.0, "b2": 0, "b3": 0, "b4": 0}
    assert learned_shape(pau, coefficients, x) == pytest.approx((0.1 + x + 0.5 * x**2) / (1 + np.abs(x)))
    assert pade(x, [0, 1], []) == pytest.approx(x)
    assert starting_shape(ActivationSpec(name="relu"), x) is None
    assert learned_shape(swish, {}, x) is None
