"""The activation gallery: f(x) and f'(x) of every activation of an experiment, or of one catalog entry.

Drawn from the numpy closed forms of ``app.activation_shapes`` (no torch). One row per activation, the
function on the left and its derivative on the right; a learnable unit shows its start (dashed) and, once
trained, the learned function of each layer (seed means of the last epoch); input-conditioned units are
drawn at the fixed context their form states, which the panel's caption repeats.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from app import activation_shapes
from app.catalog import ACTIVATIONS
from app.results.colours import colour_of
from app.results.plots import CURVE_RANGE, DOTS_PER_INCH, render
from app.spec import ActivationSpec

GALLERY_POINTS = 801


def gallery_figure(
    activations: Mapping[str, ActivationSpec], *, learned_by_layer: pd.DataFrame | None = None, title: str = ""
) -> Figure:
    """One row per activation: f(x) and f'(x) on [-4, 4]."""
    rows = max(1, len(activations))
    figure = Figure(figsize=(10, 2.9 * rows + 0.6), dpi=DOTS_PER_INCH, layout="constrained")
    figure.suptitle(title or "Activation functions and their derivatives")
    panels = figure.subplots(rows, 2, squeeze=False)
    if not activations:
        for axes in panels[0]:
            axes.text(0.5, 0.5, "no activations", ha="center", va="center", transform=axes.transAxes, color="0.4")
        return figure
    x = np.linspace(*CURVE_RANGE, GALLERY_POINTS)
    learned = learned_by_layer if learned_by_layer is not None else pd.DataFrame()
    shades = matplotlib.colormaps["viridis"]
    for index, (label, spec) in enumerate(activations.items()):
        value_axes, slope_axes = panels[index]
        info = ACTIVATIONS[spec.canonical_name]
        shape = activation_shapes.form(spec)
        value, slope = activation_shapes.curves(spec, x)
        start_label = "start" if info.can_learn else label
        style = "--" if info.can_learn else "-"
        value_axes.plot(x, value, linestyle=style, color=colour_of(label), label=start_label)
        slope_axes.plot(x, slope, linestyle=style, color=colour_of(label), label=start_label)
        of_label = (
            learned[learned["activation"] == label] if info.can_learn and not learned.empty else learned.iloc[0:0]
        )
        for position, row in enumerate(of_label.itertuples(index=False)):
            coefficients = activation_shapes.stored_coefficients(spec, row.parameters)
            if coefficients is None:
                continue
            learned_value, learned_slope = activation_shapes.curves(spec, x, coefficients)
            shade = shades(position / max(1, len(of_label) - 1))
            value_axes.plot(x, learned_value, color=shade, label=f"learned, {row.layer_name}")
            slope_axes.plot(x, learned_slope, color=shade, label=f"learned, {row.layer_name}")
        formula = spec.expression if spec.canonical_name == "custom" else info.formula
        value_axes.set_title(f"{label}: f(x) = {_shorten(str(formula))}", fontsize="small")
        slope_axes.set_title(f"f'(x): {_shorten(shape.derivative_text)}", fontsize="small")
        if shape.context_note:
            value_axes.text(
                0.02, 0.02, "fixed context (see gallery notes)", transform=value_axes.transAxes, fontsize="x-small"
            )
        for axes in (value_axes, slope_axes):
            axes.axhline(0, color="0.8", linewidth=0.8)
            axes.axvline(0, color="0.8", linewidth=0.8)
            axes.grid(alpha=0.3)
            axes.set_xlabel("x")
            if info.can_learn:
                axes.legend(fontsize="x-small", loc="upper left")
    return figure


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gallery_image(
    activations: Mapping[str, ActivationSpec],
    *,
    image_format: str,
    learned_by_layer: pd.DataFrame | None = None,
    title: str = "",
) -> bytes:
    """The gallery as PNG or SVG bytes."""
    return render(gallery_figure(activations, learned_by_layer=learned_by_layer, title=title), image_format)
