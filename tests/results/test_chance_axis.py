"""Accuracy panels carry a chance-level line and never zoom into the noise of a run that did not train (issue 15 item 2)."""

from __future__ import annotations

import pandas as pd

from app.results.plots import PlotData, learning_curves_figure
from tests.results.synthetic import SyntheticArm, synthetic_tables


def _accuracy_panels(arms: list[SyntheticArm], chance: float | None) -> list:
    _runs, metrics, layers = synthetic_tables(arms, seeds=(0, 1, 2), epochs=4)
    figure = learning_curves_figure(
        PlotData(metrics=metrics, layer_metrics=layers, summary=pd.DataFrame(columns=["n"]), chance=chance)
    )
    return [axes for axes in figure.axes if axes.get_title().endswith("accuracy")]


def test_a_failed_run_near_chance_is_drawn_on_an_axis_from_chance_well_above_it() -> None:
    # Test accuracy rises from about 0.066 to 0.105: the noise of a 10-class net that did not train.
    panels = _accuracy_panels([SyntheticArm("sigmoid", "sigmoid", 0.105, noise=0.002)], chance=0.1)
    assert len(panels) == 2
    for axes in panels:
        low, high = axes.get_ylim()
        assert low <= 0.1 and high >= 0.1 + 0.25 * 0.9
        chance_lines = [line for line in axes.get_lines() if line.get_label() == "chance"]
        assert len(chance_lines) == 1 and list(chance_lines[0].get_ydata()) == [0.1, 0.1]


def test_the_axis_reaches_the_best_accuracy_and_unknown_chance_draws_no_line() -> None:
    panels = _accuracy_panels([SyntheticArm("relu", "relu", 0.97, noise=0.002)], chance=0.1)
    low, high = panels[1].get_ylim()
    assert low <= 0.1 and high >= 0.97
    unknown = _accuracy_panels([SyntheticArm("relu", "relu", 0.97, noise=0.002)], chance=None)
    assert all(line.get_label() != "chance" for axes in unknown for line in axes.get_lines())
