"""Static gradient-flow plots (PNG or SVG for papers) of the tables in app.results.gradient_flow.

``gradient-heatmap``: one panel per activation, layer against epoch, coloured by log10 gradient norm on one
colour scale shared by every panel, so a vanishing gradient looks the same wherever it happens.
``layer-profile``: one metric against the layer index at one epoch, one line per activation (its fixed
colour) with the seeds' range as a band, the legend outside the axes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from app.results.colours import colour_of
from app.results.gradient_flow import LOG_METRICS, PROFILE_METRICS, gradient_heatmap, layer_profile
from app.results.plots import DOTS_PER_INCH, render

GRADIENT_FLOW_PLOT_KINDS: dict[str, str] = {
    "gradient-heatmap": "Layer x epoch map of log10 gradient norm (mean over seeds in log space), one panel per "
    "activation on one shared colour scale.",
    "layer-profile": "One layer metric (`metric=grad_norm|dead_fraction|saturated_fraction`) against the layer "
    "index at one epoch (`epoch=N`, default the last recorded; 0 is the network at initialisation): one line "
    "per activation, cross-seed mean with the seeds' range as a band.",
}
HEATMAP_COLUMNS_PER_ROW = 4


def _note(figure: Figure, message: str) -> Figure:
    axes = figure.subplots()
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])
    return figure


def gradient_heatmap_figure(layers: pd.DataFrame, *, title: str = "") -> Figure:
    """One layer x epoch panel per activation, log10 gradient norm on one colour scale with one colour bar."""
    table = gradient_heatmap(layers)
    labels = list(dict.fromkeys(table.sort_values("activation_index", kind="stable")["activation"]))
    columns = max(1, min(HEATMAP_COLUMNS_PER_ROW, len(labels)))
    rows = max(1, math.ceil(len(labels) / columns))
    depth = int(table["layer"].nunique()) if not table.empty else 1
    figure = Figure(
        figsize=(3.4 * columns + 1.4, (1.2 + 0.12 * depth) * rows + 0.8), dpi=DOTS_PER_INCH, layout="constrained"
    )
    figure.suptitle(title or "Gradient flow: log10 gradient norm per layer and epoch")
    if table.empty:
        return _note(figure, "no gradient norms yet")
    low, high = float(table["log10_grad_norm"].min()), float(table["log10_grad_norm"].max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    panels = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    image = None
    for position, label in enumerate(labels):
        axes = panels[position // columns][position % columns]
        grid = table[table["activation"] == label].pivot(index="layer", columns="epoch", values="log10_grad_norm")
        epochs, layer_numbers = grid.columns.to_numpy(), grid.index.to_numpy()
        image = axes.pcolormesh(
            _edges(epochs), _edges(layer_numbers), grid.to_numpy(), cmap="viridis", vmin=low, vmax=high, shading="flat"
        )
        axes.set_title(label, color=colour_of(label))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        if position % columns == 0:
            axes.set_ylabel("layer")
        if position // columns == rows - 1 or position + columns >= len(labels):
            axes.set_xlabel("epoch")
    for position in range(len(labels), rows * columns):
        panels[position // columns][position % columns].set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=panels, label="log10 gradient norm", shrink=0.9)
    return figure


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around integer centres (epochs, layers), so each cell sits on its number."""
    values = np.asarray(centres, dtype=float)
    if values.size == 1:
        return np.array([values[0] - 0.5, values[0] + 0.5])
    middles = (values[:-1] + values[1:]) / 2
    return np.concatenate([[values[0] - (middles[0] - values[0])], middles, [values[-1] + (values[-1] - middles[-1])]])


def layer_profile_figure(layers: pd.DataFrame, *, metric: str, epoch: int | None, title: str = "") -> Figure:
    """The metric against the layer index at one epoch: one line per activation, the seeds' range as a band."""
    table = layer_profile(layers, metric=metric, epoch=epoch)
    figure = Figure(figsize=(10, 4.6), dpi=DOTS_PER_INCH, layout="constrained")
    if table.empty:
        figure.suptitle(title or f"{PROFILE_METRICS[metric]} per layer")
        return _note(figure, f"no {PROFILE_METRICS[metric]} recorded")
    chosen = int(table["epoch"].iloc[0])
    figure.suptitle(title or f"{PROFILE_METRICS[metric]} per layer at epoch {chosen}")
    axes = figure.subplots()
    for label, curve in table.sort_values(["activation_index", "layer"]).groupby("activation", sort=False):
        colour = colour_of(str(label))
        axes.plot(curve["layer"], curve["mean"], color=colour, label=str(label), marker="o", markersize=3)
        axes.fill_between(curve["layer"], curve["seed_min"], curve["seed_max"], color=colour, alpha=0.2)
    if metric in LOG_METRICS:
        axes.set_yscale("log")
    else:
        axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("layer (1 = nearest the input)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(f"{PROFILE_METRICS[metric]} (band: seed range)")
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    return figure


def gradient_flow_image(
    kind: str,
    *,
    layers: pd.DataFrame,
    image_format: str,
    metric: str = "grad_norm",
    epoch: int | None = None,
    title: str = "",
) -> bytes:
    """One gradient-flow plot as PNG or SVG bytes."""
    if kind == "gradient-heatmap":
        return render(gradient_heatmap_figure(layers, title=title), image_format)
    if kind == "layer-profile":
        return render(layer_profile_figure(layers, metric=metric, epoch=epoch, title=title), image_format)
    raise ValueError(f"gradient-flow plot kind must be one of {', '.join(GRADIENT_FLOW_PLOT_KINDS)}; got {kind!r}")
