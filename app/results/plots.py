"""Server-side plots of an experiment as PNG or SVG bytes (matplotlib's object API, no pyplot state).

Every figure is a standalone ``matplotlib.figure.Figure`` rendered by the Agg canvas (PNG) or the SVG
backend, so concurrent requests share no global figure state. Each activation keeps its colour across
plots and experiments (app.results.colours). An empty experiment still gets a valid image with a note.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from app.results.colours import colour_of
from app.results.functions import learned_shape, starting_shape
from app.results.gradient_flow import trained_layer_rows
from app.results.plot_kinds import PLOT_KINDS
from app.results.statistics import learning_curves
from app.spec import ActivationSpec

ImageFormat = Literal["png", "svg"]
IMAGE_FORMATS: tuple[str, ...] = ("png", "svg")
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
DOTS_PER_INCH = 100
CURVE_RANGE = (-4.0, 4.0)
# The learning curves' panels (family, split) and the bootstrap resamples of their bands, in the static plot,
# the report's interactive plot and GET /v1/experiments/{id}/learning-curves alike.
CURVE_METRICS: tuple[str, ...] = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
CURVE_RESAMPLES = 500


@dataclass
class PlotData:
    """Everything a plot may read: tables from the results service and the spec's activations by label."""

    metrics: pd.DataFrame
    layer_metrics: pd.DataFrame
    summary: pd.DataFrame
    activations: Mapping[str, ActivationSpec] = field(default_factory=dict)
    learned_by_layer: pd.DataFrame | None = None
    run_values: pd.DataFrame | None = None
    title: str = ""
    # Accuracy of a model that did not learn (app.results.failures.chance_accuracy); None when unknown.
    chance: float | None = None


def render(figure: Figure, image_format: str) -> bytes:
    """The figure as PNG or SVG bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}; got {image_format!r}")
    buffer = io.BytesIO()
    if image_format == "png":
        FigureCanvasAgg(figure)
        figure.savefig(buffer, format="png", dpi=DOTS_PER_INCH, metadata={"Software": None})
    else:
        # A fixed hash salt and no date make the same data give byte-identical SVG.
        with matplotlib.rc_context({"svg.hashsalt": "activation-lab", "svg.fonttype": "path"}):
            figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def _empty(axes: Axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])


def _new_figure(width: float, height: float, title: str) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DOTS_PER_INCH, layout="constrained")
    if title:
        figure.suptitle(title)
    return figure


def learning_curves_figure(data: PlotData) -> Figure:
    """2 x 2 panels (loss/accuracy x train/test): cross-seed mean per activation with a 95% band."""
    figure = _new_figure(11, 7.5, data.title or "Learning curves")
    panels = figure.subplots(2, 2, squeeze=False)
    drawn = False
    for row, family in enumerate(("loss", "accuracy")):
        for column, split in enumerate(("train", "test")):
            axes = panels[row][column]
            metric = f"{split}_{family}"
            curves = (
                learning_curves(data.metrics, metric=metric, resamples=CURVE_RESAMPLES)
                if not data.metrics.empty and metric in data.metrics.columns
                else pd.DataFrame()
            )
            if curves.empty:
                _empty(axes, f"no {metric} yet")
                continue
            for (label, _index), curve in curves.groupby(["activation", "activation_index"], sort=False):
                colour = colour_of(str(label))
                axes.plot(curve["epoch"], curve["mean"], color=colour, label=str(label), linewidth=1.6)
                band = curve.dropna(subset=["ci_low", "ci_high"])
                if not band.empty:
                    axes.fill_between(band["epoch"], band["ci_low"], band["ci_high"], color=colour, alpha=0.2)
            if family == "accuracy" and data.chance is not None:
                chance_axis(axes, curves, chance=data.chance)
            axes.set_title(metric.replace("_", " "))
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel(family)
            axes.grid(alpha=0.3)
            drawn = True
    if drawn:
        handles, labels = panels[0][0].get_legend_handles_labels()
        if not handles:
            handles, labels = panels[1][1].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    return figure


# An accuracy axis spans at least from chance to chance plus this share of the way to 1, so the noise of a
# run that did not train stays flat instead of being zoomed into the whole panel.
ACCURACY_MIN_SPAN = 0.25


def chance_axis(axes: Axes, curves: pd.DataFrame, *, chance: float) -> None:
    """A dotted chance-level line, and y limits that span at least chance .. best (never zoomed into noise)."""
    axes.axhline(chance, color="0.35", linestyle=":", linewidth=1.2, label="chance")
    values = pd.concat([curves[column] for column in ("mean", "ci_low", "ci_high") if column in curves.columns])
    values = values.dropna()
    low = min(chance, float(values.min())) if not values.empty else chance
    high = max(chance + ACCURACY_MIN_SPAN * (1.0 - chance), float(values.max()) if not values.empty else chance)
    pad = 0.03 * (high - low)
    axes.set_ylim(max(0.0, low - pad), min(1.0, high) + pad)


def _activation_labels(frame: pd.DataFrame) -> list[tuple[str, int]]:
    ordered = frame.sort_values("activation_index", kind="stable").drop_duplicates("activation")
    return [
        (str(label), int(index))
        for label, index in zip(ordered["activation"], ordered["activation_index"], strict=True)
    ]


# Up to this many layers the gradient-norm plot names each layer in a legend; deeper nets get a colour bar.
LEGEND_MAX_LAYERS = 8


def gradient_norms_figure(data: PlotData) -> Figure:
    """One panel per activation on one shared log y scale: each layer's gradient norm per epoch (mean over seeds).

    A layer has the same shade in every panel; its key (a legend, or a colour bar for deep nets) stands outside
    the panels, never over a title or a curve.
    """
    layers = trained_layer_rows(data.layer_metrics)
    labels = _activation_labels(layers) if not layers.empty else []
    columns = max(1, min(4, len(labels)))
    rows = max(1, math.ceil(len(labels) / columns))
    figure = _new_figure(3.6 * columns + 1.8, 2.8 * rows + 0.6, data.title or "Gradient norm per layer")
    panels = figure.subplots(rows, columns, squeeze=False, sharey=True)
    if not labels:
        _empty(panels[0][0], "no layer metrics yet")
        return figure
    measured = layers[layers["grad_norm"] > 0]
    layer_numbers = sorted(int(layer) for layer in measured["layer"].unique())
    names = dict(zip(measured["layer"], measured.get("layer_name", measured["layer"]), strict=False))
    palette = matplotlib.colormaps["viridis"]
    shades = {layer: palette(position / max(1, len(layer_numbers) - 1)) for position, layer in enumerate(layer_numbers)}
    key: dict[str, Any] = {}
    for position, (label, _index) in enumerate(labels):
        axes = panels[position // columns][position % columns]
        means = measured[measured["activation"] == label].groupby(["layer", "epoch"])["grad_norm"].mean().reset_index()
        if means.empty:
            _empty(axes, f"{label}: no gradients")
            axes.set_title(label)
            continue
        for layer, curve in means.groupby("layer", sort=True):
            name = str(names.get(layer, layer))
            (line,) = axes.plot(curve["epoch"], curve["grad_norm"], color=shades[int(layer)], label=name)
            key.setdefault(name, line)
        axes.set_yscale("log")
        axes.set_title(label)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if position % columns == 0:
            axes.set_ylabel("gradient norm")
        axes.grid(alpha=0.3, which="major")
    for position in range(len(labels), rows * columns):
        panels[position // columns][position % columns].set_axis_off()
    if len(layer_numbers) <= LEGEND_MAX_LAYERS:
        figure.legend(list(key.values()), list(key), loc="outside right upper", fontsize="small", title="layer")
    elif layer_numbers:
        scale = ScalarMappable(norm=Normalize(layer_numbers[0], layer_numbers[-1]), cmap=palette)
        figure.colorbar(scale, ax=panels, label="layer (1 = nearest the input)", shrink=0.9)
    return figure


def unit_health_figure(data: PlotData) -> Figure:
    """Dead and saturated unit fractions per epoch, per activation (mean over layers and seeds)."""
    layers = trained_layer_rows(data.layer_metrics)
    figure = _new_figure(11, 4.2, data.title or "Dead and saturated units")
    panels = figure.subplots(1, 2, squeeze=False)[0]
    key: dict[str, Any] = {}
    for axes, column, title in (
        (panels[0], "dead_fraction", "dead units (never positive on the probe set)"),
        (panels[1], "saturated_fraction", "saturated units"),
    ):
        measured = layers.dropna(subset=[column]) if not layers.empty and column in layers.columns else pd.DataFrame()
        if measured.empty:
            _empty(axes, f"{column.replace('_', ' ')}: not measured for these activations")
            axes.set_title(title)
            continue
        for label, _index in _activation_labels(measured):
            curve = measured[measured["activation"] == label].groupby("epoch")[column].mean()
            (line,) = axes.plot(
                curve.index, curve.to_numpy(), color=colour_of(label), label=label, marker="o", markersize=3
            )
            key.setdefault(label, line)
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel("fraction of units")
        axes.grid(alpha=0.3)
    if key:
        figure.legend(list(key.values()), list(key), loc="outside right upper", fontsize="small")
    return figure


def final_metric_figure(data: PlotData) -> Figure:
    """Per activation: each seed's value as a small dot, the cross-seed mean as a large dot with its 95% CI."""
    summary = data.summary
    figure = _new_figure(8, 1.0 + 0.45 * max(3, len(summary)), data.title or "Final metric")
    axes = figure.subplots()
    if summary.empty or summary["n"].fillna(0).sum() == 0:
        _empty(axes, "no finished runs yet")
        return figure
    metric = str(summary["metric"].iloc[0])
    kind = str(summary["summary"].iloc[0])
    positions = np.arange(len(summary))[::-1]
    run_values = data.run_values if data.run_values is not None else pd.DataFrame()
    for position, row in zip(positions, summary.itertuples(index=False), strict=True):
        colour = colour_of(str(row.activation))
        if not (isinstance(row.mean, float) and math.isnan(row.mean)):
            if not math.isnan(row.ci_low):
                axes.plot([row.ci_low, row.ci_high], [position, position], color=colour, linewidth=2.5)
            axes.plot([row.mean], [position], "o", color=colour, markersize=9)
        seed_values = _seed_values(run_values, str(row.activation))
        if seed_values:
            axes.plot(seed_values, [position] * len(seed_values), "|", color="0.2", markersize=10)
    axes.set_yticks(positions, [str(label) for label in summary["activation"]])
    axes.set_xlabel(f"{metric} ({kind}); bar: 95% bootstrap CI; ticks: seeds")
    axes.grid(alpha=0.3, axis="x")
    return figure


def _seed_values(run_values: pd.DataFrame, label: str) -> list[float]:
    """The per-run values that entered the statistics of one activation."""
    if run_values.empty:
        return []
    chosen = run_values[(run_values["activation"] == label) & run_values["included"]]["value"].dropna()
    return [float(value) for value in chosen]


def learnable_activations(activations: Mapping[str, ActivationSpec]) -> dict[str, ActivationSpec]:
    """The activations with a starting shape to compare against, by label (the learned-functions panels)."""
    return {label: spec for label, spec in activations.items() if starting_shape(spec, np.zeros(1)) is not None}


def plot_kinds_with_content(*, activations: Mapping[str, ActivationSpec], layer_metrics: pd.DataFrame) -> list[str]:
    """The plot kinds that have something to draw: no learned-functions panel without a learnable activation,
    no unit-health panel when no layer records a dead or saturated fraction."""
    kinds = list(PLOT_KINDS)
    if not learnable_activations(activations):
        kinds.remove("learned-functions")
    fractions = [column for column in ("dead_fraction", "saturated_fraction") if column in layer_metrics.columns]
    if not layer_metrics.empty and not any(layer_metrics[column].notna().any() for column in fractions):
        kinds.remove("unit-health")
    return kinds


def learned_functions_figure(data: PlotData) -> Figure:
    """One panel per learnable activation: the starting shape (dashed) and the learned function per layer."""
    learnable = learnable_activations(data.activations)
    columns = max(1, min(3, len(learnable)))
    rows = max(1, math.ceil(len(learnable) / columns))
    figure = _new_figure(4.2 * columns + 0.5, 3.4 * rows + 0.6, data.title or "Learned activation functions")
    panels = figure.subplots(rows, columns, squeeze=False)
    if not learnable:
        _empty(panels[0][0], "no learnable activations in this experiment")
        return figure
    x = np.linspace(*CURVE_RANGE, 401)
    learned = data.learned_by_layer if data.learned_by_layer is not None else pd.DataFrame()
    palette = matplotlib.colormaps["viridis"]
    for position, (label, spec) in enumerate(learnable.items()):
        axes = panels[position // columns][position % columns]
        start = starting_shape(spec, x)
        if start is not None:
            axes.plot(x, start, linestyle="--", color="0.3", label="start")
        of_label = learned[learned["activation"] == label] if not learned.empty else learned
        for layer_position, row in enumerate(of_label.itertuples(index=False)):
            curve = learned_shape(spec, row.parameters, x)
            if curve is None:
                continue
            shade = palette(layer_position / max(1, len(of_label) - 1))
            axes.plot(x, curve, color=shade, label=f"learned, {row.layer_name}")
        if of_label.empty:
            axes.text(0.05, 0.9, "no learned values yet", transform=axes.transAxes, color="0.4")
        axes.axhline(0, color="0.8", linewidth=0.8)
        axes.axvline(0, color="0.8", linewidth=0.8)
        axes.set_title(label)
        axes.set_xlabel("x")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    for position in range(len(learnable), rows * columns):
        panels[position // columns][position % columns].set_axis_off()
    return figure


FIGURES: dict[str, Callable[[PlotData], Figure]] = {
    "learning-curves": learning_curves_figure,
    "gradient-norms": gradient_norms_figure,
    "unit-health": unit_health_figure,
    "final-metric": final_metric_figure,
    "learned-functions": learned_functions_figure,
}


def plot(kind: str, *, data: PlotData, image_format: str) -> bytes:
    """Draw one kind of plot and return its PNG or SVG bytes."""
    if kind not in FIGURES:
        raise ValueError(f"plot kind must be one of {', '.join(FIGURES)}; got {kind!r}")
    return render(FIGURES[kind](data), image_format)
