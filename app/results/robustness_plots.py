"""The robustness plot: test accuracy against the strength of each perturbation, as PNG or SVG bytes.

One panel per kind (noise, fgsm, pgd) of the evaluation block, one row of panels per cell of a factorial
experiment; in each, one line per activation in its label's colour (``app.results.colours``): the
cross-seed mean of the accuracy at each strength with its 95% bootstrap band over the seeds (the
``view=robustness`` results, ``app.results.robustness``), and the dotted chance level. Standalone
figures rendered by ``app.results.plots.render``; an experiment without rows gets a note saying why.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from app.results.colours import colour_of
from app.results.plots import DOTS_PER_INCH, chance_axis, render

ROBUSTNESS_PLOT_KINDS: dict[str, str] = {
    "robustness": "Test accuracy against the strength of input noise, FGSM and PGD (one panel per kind): the "
    "cross-seed mean per activation with its 95% bootstrap band.",
}
AXIS_LABELS = {
    "noise": "noise standard deviation",
    "fgsm": "FGSM epsilon",
    "pgd": "PGD epsilon",
}
PANEL_WIDTH = 4.2
PANEL_HEIGHT = 3.3


def robustness_figure(
    summary: pd.DataFrame, *, title: str = "", chance: float | None = None, empty_reason: str = ""
) -> Figure:
    """Accuracy against strength per kind (and per cell), one line per activation with its seed band."""
    kinds = [kind for kind in AXIS_LABELS if not summary.empty and (summary["kind"] == kind).any()]
    cells: list[str | None] = list(dict.fromkeys(summary["cell"])) if "cell" in summary.columns else [None]
    rows, columns = max(1, len(cells)), max(1, len(kinds))
    figure = Figure(
        figsize=(PANEL_WIDTH * columns + 1.6, PANEL_HEIGHT * rows + 0.7), dpi=DOTS_PER_INCH, layout="constrained"
    )
    figure.suptitle(title or "Robustness")
    panels = figure.subplots(rows, columns, squeeze=False)
    if not kinds:
        axes = panels[0][0]
        axes.text(0.5, 0.5, empty_reason or "no robustness measured yet", ha="center", va="center", color="0.4")
        axes.set_xticks([])
        axes.set_yticks([])
        return figure
    for row, cell in enumerate(cells):
        of_cell = summary if cell is None else summary[summary["cell"] == cell]
        for column, kind in enumerate(kinds):
            axes = panels[row][column]
            of_kind = of_cell[of_cell["kind"] == kind]
            for label, curve in of_kind.sort_values(["activation_index", "strength"]).groupby("activation", sort=False):
                colour = colour_of(str(label))
                axes.plot(curve["strength"], curve["mean"], color=colour, marker="o", markersize=3, label=str(label))
                band = curve.dropna(subset=["ci_low", "ci_high"])
                if not band.empty:
                    axes.fill_between(band["strength"], band["ci_low"], band["ci_high"], color=colour, alpha=0.2)
            if chance is not None and not of_kind.empty:
                chance_axis(axes, of_kind, chance=chance)
            axes.set_title(AXIS_LABELS[kind] if cell is None else f"{cell}: {AXIS_LABELS[kind]}", fontsize="medium")
            axes.set_xlabel(f"{AXIS_LABELS[kind]} (standardised units)")
            axes.set_ylabel("test accuracy")
            axes.grid(alpha=0.3)
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")
    return figure


def robustness_plot(
    summary: pd.DataFrame, *, image_format: str, title: str = "", chance: float | None = None, empty_reason: str = ""
) -> bytes:
    """The robustness plot as PNG or SVG bytes."""
    return render(robustness_figure(summary, title=title, chance=chance, empty_reason=empty_reason), image_format)
