"""Plots across the cells of a factorial experiment as PNG or SVG bytes: the critical-difference diagram, interactions.

Standalone matplotlib figures rendered by app/results/plots.py ``render`` (no pyplot state), each activation
in its label's colour (``app.results.colours``). An insufficient ranking or effect still gives a valid image with its reason.

- ``critical-difference``: Demšar's (2006) diagram drawn by scikit-posthocs ``critical_difference_diagram``:
  the mean ranks over cells on an axis (1 the best), a bar of length CD, and crossbars joining the
  activations that the Nemenyi post-hoc test does not tell apart (``Ranking.pairs.different``).
- ``interaction``: one panel per factor, the metric's mean over seeds against the factor's levels, one line
  per activation with its bootstrap band over seeds, the panel title giving the activation x factor
  interaction's p-value and partial eta squared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scikit_posthocs
from matplotlib.figure import Figure

from app.results.colours import colour_of, colours_of
from app.results.factorial import FactorEffect, Ranking
from app.results.plots import DOTS_PER_INCH, render

FACTORIAL_PLOT_KINDS: dict[str, str] = {
    "critical-difference": "Mean rank of each activation over the cells with the Nemenyi critical difference.",
    "interaction": "The metric against each factor's levels, one line per activation with its seed band.",
}
PANEL_WIDTH = 4.5
PANEL_HEIGHT = 3.5


def _note(figure: Figure, message: str) -> None:
    axes = figure.add_subplot()
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])


def critical_difference_figure(ranking: Ranking, *, title: str = "") -> Figure:
    """Demšar's critical-difference diagram of the ranking (a note when it is insufficient)."""
    labels = list(ranking.activations)
    height = 2.0 + 0.4 * max(len(labels), 2)
    figure = Figure(figsize=(7.0, height), dpi=DOTS_PER_INCH, layout="constrained")
    if ranking.status != "ok":
        _note(figure, f"No ranking: {ranking.reason}")
        return figure
    different = {(row.activation, row.opponent) for row in ranking.pairs.itertuples() if row.different}
    # 0 marks a significant pair for scikit-posthocs (p below alpha), 1 one it cannot tell apart.
    matrix = pd.DataFrame(1.0, index=labels, columns=labels)
    for first, second in different:
        matrix.loc[first, second] = matrix.loc[second, first] = 0.0
    axes = figure.add_subplot()
    scikit_posthocs.critical_difference_diagram(
        pd.Series(ranking.mean_ranks),
        matrix,
        cd=ranking.critical_difference,
        alpha=ranking.alpha,
        ax=axes,
        color_palette=colours_of(labels),
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    axes.set_xlim(1.0, float(max(len(labels), 2)))
    # Room above the rank axis's labels for the CD bar that scikit-posthocs draws at height 0.5.
    low, _ = axes.get_ylim()
    axes.set_ylim(low, 1.6)
    decisive = ranking.iman_davenport_p if ranking.iman_davenport_p is not None else ranking.p_value
    test = "Iman-Davenport" if ranking.iman_davenport_p is not None else (ranking.test or "")
    cd = ranking.critical_difference or float("nan")
    heading = (
        f"{title + ': ' if title else ''}mean rank of {ranking.metric} over {len(ranking.cells)} cells (1 = best)\n"
        f"{test} p = {decisive:.3g}; Nemenyi CD = {cd:.2f} at alpha {ranking.alpha:g}"
    )
    figure.suptitle(heading, fontsize="medium")
    return figure


def interaction_figure(
    effects: Sequence[FactorEffect], *, metric: str, activations: Sequence[str] | None = None, title: str = ""
) -> Figure:
    """One panel per factor: mean of the metric per level, one line per activation with its seed band."""
    panels = max(len(effects), 1)
    figure = Figure(figsize=(PANEL_WIDTH * panels, PANEL_HEIGHT), dpi=DOTS_PER_INCH, layout="constrained")
    if title:
        figure.suptitle(title)
    if not effects:
        _note(figure, "No factors: the experiment varies only the activation and the seed.")
        return figure
    order = list(activations) if activations is not None else list(pd.unique(effects[0].means["activation"]))
    colours = colours_of(order)
    grid = figure.subplots(1, panels, squeeze=False)[0]
    for axes, effect in zip(grid, effects, strict=True):
        positions = np.arange(len(effect.levels))
        for label in order:
            rows = effect.means[effect.means["activation"] == label].set_index("level").reindex(effect.levels)
            if rows["mean"].isna().all():
                continue
            colour = colours.get(label, colour_of(label))
            axes.plot(positions, rows["mean"].to_numpy(dtype=float), marker="o", color=colour, label=label)
            axes.fill_between(
                positions,
                rows["ci_low"].to_numpy(dtype=float),
                rows["ci_high"].to_numpy(dtype=float),
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
        axes.set_xticks(positions, list(effect.levels))
        axes.set_xlabel(effect.factor)
        axes.set_ylabel(metric)
        interaction = effect.term("interaction")
        if effect.status == "ok" and interaction["p_value"] is not None:
            eta = interaction["partial_eta_squared"]
            axes.set_title(
                f"activation x {effect.factor}: p = {interaction['p_value']:.3g}, "
                f"partial eta² = {eta if eta is None else round(eta, 2)}",
                fontsize="small",
            )
        else:
            axes.set_title(f"activation x {effect.factor}: {effect.reason or 'not tested'}", fontsize="small")
        axes.grid(alpha=0.3)
    grid[0].legend(fontsize="small")
    return figure


def factorial_plot(
    kind: str,
    *,
    image_format: str,
    ranking: Ranking | None = None,
    effects: Sequence[FactorEffect] = (),
    metric: str = "",
    activations: Sequence[str] | None = None,
    title: str = "",
) -> bytes:
    """The named factorial plot as PNG or SVG bytes."""
    if kind not in FACTORIAL_PLOT_KINDS:
        raise ValueError(f"plot must be one of {', '.join(FACTORIAL_PLOT_KINDS)}; got {kind!r}")
    if kind == "critical-difference":
        if ranking is None:
            raise ValueError("the critical-difference plot needs the ranking")
        return render(critical_difference_figure(ranking, title=title), image_format)
    return render(interaction_figure(effects, metric=metric, activations=activations, title=title), image_format)
