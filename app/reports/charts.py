"""The report's interactive charts: which plots the page also draws in the browser (app/static/report-plots.js) and
the configuration it draws them from (the API tables' URLs, colours, chance and the axis rules)."""

from __future__ import annotations

from typing import Any

from app.results import service as results_service
from app.results.colours import colours_of
from app.results.failures import chance_accuracy
from app.results.gradient_flow import PROFILE_METRICS, recorded_epochs
from app.results.plots import ACCURACY_MIN_SPAN

# The plots the report also draws interactively from the API's tables (app/static/report-plots.js).
INTERACTIVE_PLOTS = frozenset({"learning-curves", "gradient-heatmap", "layer-profile"})
GRADIENT_FLOW_PLOTS = ("gradient-heatmap", "layer-profile")


def chart_config(tables: results_service.ExperimentTables, base: str) -> dict[str, Any]:
    """The page's chart configuration: table URLs, each activation's colour, chance and the accuracy axis rule."""
    labels = list(tables.activations) + [str(label) for label in tables.runs.get("activation", [])]
    return {
        "tables": {
            "learning_curves": f"{base}/learning-curves?format=json",
            "gradient_heatmap": f"{base}/gradient-flow?view=heatmap&format=json",
            "gradient_flow": f"{base}/gradient-flow",
        },
        "colours": colours_of(list(dict.fromkeys(labels))),
        "chance": chance_accuracy(classes=tables.classes),
        "accuracy_min_span": ACCURACY_MIN_SPAN,
        "epochs": recorded_epochs(tables.layers),
        "profile_metrics": PROFILE_METRICS,
    }
