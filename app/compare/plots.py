"""The comparison's plot: the learning curves of several experiments overlaid on one axis.

One colour per activation label (app.results.colours, the same as in every report) and one line style per
experiment, so "relu in A" and "relu in B" share a colour and differ in their dashes. Curves are the
cross-seed means of app.results.statistics.learning_curves; in an experiment with factors the mean runs over
its cells as well. Rendered like every other plot (app.results.plots.render).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import LineStyleType

from app.compare.service import ComparedExperiment
from app.results.colours import colour_of
from app.results.failures import chance_accuracy
from app.results.plots import DOTS_PER_INCH, chance_axis, render
from app.results.statistics import learning_curves, metric_family

COMPARE_PLOT_KINDS: dict[str, str] = {
    "learning-curves": "The metric per epoch of every experiment, cross-seed means: one colour per activation, "
    "one line style per experiment.",
}
# Line styles of the experiments in the order named (the first is the reference, solid).
LINE_STYLES: tuple[LineStyleType, ...] = (
    "-",
    "--",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (1, 3)),
    (0, (8, 3)),
    (0, (3, 1, 3, 1, 1, 1)),
)


# How a page names each of those styles (the same order).
LINE_STYLE_NAMES: tuple[str, ...] = (
    "solid",
    "dashed",
    "dotted",
    "dash-dot",
    "dash-dot-dot",
    "loosely dotted",
    "long dashes",
    "dash-dash-dot",
)


def line_style_name(position: int) -> str:
    """The name of the line style of the experiment named at this position."""
    return LINE_STYLE_NAMES[position % len(LINE_STYLE_NAMES)]


def line_style(position: int) -> LineStyleType:
    """The line style of the experiment named at this position."""
    return LINE_STYLES[position % len(LINE_STYLES)]


def learning_curves_figure(experiments: Sequence[ComparedExperiment], *, metric: str) -> Figure:
    """The metric per epoch, one line per (experiment, activation), with a colour and a line-style legend."""
    figure = Figure(figsize=(11, 5.5), dpi=DOTS_PER_INCH, layout="constrained")
    figure.suptitle(f"{metric.replace('_', ' ')}: " + " vs ".join(experiment.name for experiment in experiments))
    axes = figure.subplots()
    labels: dict[str, None] = {}
    drawn: list[pd.DataFrame] = []
    for position, experiment in enumerate(experiments):
        metrics = experiment.tables.metrics
        if metrics.empty or metric not in metrics.columns:
            continue
        curves = learning_curves(metrics, metric=metric, resamples=200)
        for label, curve in curves.groupby("activation", sort=False):
            labels[str(label)] = None
            axes.plot(
                curve["epoch"],
                curve["mean"],
                color=colour_of(str(label)),
                linestyle=line_style(position),
                linewidth=1.6,
            )
        drawn.append(curves)
    if not drawn or all(curves.empty for curves in drawn):
        axes.text(0.5, 0.5, f"no {metric} yet", ha="center", va="center", transform=axes.transAxes, color="0.4")
        return figure
    chance = chance_accuracy(classes=experiments[0].tables.classes)
    if metric_family(metric) == "accuracy" and chance is not None:
        chance_axis(axes, pd.concat(drawn, ignore_index=True), chance=chance)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(metric.replace("_", " "))
    axes.grid(alpha=0.3)
    activation_handles = [Line2D([], [], color=colour_of(label), linewidth=2.5, label=label) for label in labels]
    experiment_handles = [
        Line2D([], [], color="0.2", linestyle=line_style(position), linewidth=1.6, label=experiment.name)
        for position, experiment in enumerate(experiments)
    ]
    figure.legend(handles=activation_handles, title="activation", loc="outside right upper", fontsize="small")
    figure.legend(handles=experiment_handles, title="experiment", loc="outside right lower", fontsize="small")
    return figure


def compare_image(experiments: Sequence[ComparedExperiment], *, kind: str, metric: str, image_format: str) -> bytes:
    """One plot of the comparison as PNG or SVG bytes."""
    if kind not in COMPARE_PLOT_KINDS:
        raise ValueError(f"plot kind must be one of {', '.join(COMPARE_PLOT_KINDS)}; got {kind!r}")
    return render(learning_curves_figure(experiments, metric=metric), image_format)
