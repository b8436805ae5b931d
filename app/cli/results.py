"""``actlab results ID [--format table|csv|json]``: print an experiment's cross-seed comparison.

``table`` prints the per-activation summary (rank, mean ± std, 95% CI, verdict against the
baseline; one table per cell of a factorial experiment) followed by the recommendation; with
``--view ranking`` the mean ranks over the cells with the Friedman test and critical difference, with
``--view effects`` the means per factor level and the activation x factor interaction; ``csv`` and
``json`` print the service's table as it is, ready for a file or a pipe.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, TextIO

import httpx

from actlab.http import ClientError
from app.cli.connection import add_connection_arguments, make_client, parse_experiment_id

OUTPUT_FORMATS = ("table", "csv", "json")
VIEWS = ("summary", "pairs", "runs", "ranking", "effects")


def register(subparsers: Any) -> None:
    """Add the results subcommand."""
    parser = subparsers.add_parser(
        "results",
        help="print an experiment's per-activation comparison",
        description="GET /v1/experiments/ID/results and print it as a table, CSV or JSON.",
    )
    parser.add_argument("experiment_id", metavar="ID", help="experiment id")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="table", dest="output_format")
    parser.add_argument("--metric", default="test_accuracy", help="metric to compare (default test_accuracy)")
    parser.add_argument("--summary", choices=("final", "best", "mean_last_k"), default="final")
    parser.add_argument("--k", type=int, default=3, help="epochs averaged by --summary mean_last_k (default 3)")
    parser.add_argument("--baseline", default=None, help="activation label to compare against (default relu)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--threshold", type=float, default=None, help="report epochs needed to reach this value")
    parser.add_argument("--view", choices=VIEWS, default="summary")
    add_connection_arguments(parser)
    parser.set_defaults(handler=results)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _aligned(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *body]]
    return [lines[0], "  ".join("-" * width for width in widths), *lines[1:]]


def format_ranking(rows: list[dict[str, Any]]) -> str:
    """The ranking over cells: the test and critical difference, then each activation's mean rank, best first."""
    if not rows:
        return "no activations"
    first = rows[0]
    if first["status"] != "ok":
        return f"ranking insufficient: {first['reason']}"
    decisive = "iman_davenport_p" if first.get("iman_davenport_p") is not None else "p_value"
    caption = (
        f"{first['metric']} ({first['summary']}) over {len(first['cells'])} cells: {first['test']} "
        f"statistic {_number(first.get('statistic'), 3)}, p = {_number(first.get(decisive), 3)}"
        + (" (Iman-Davenport)" if decisive == "iman_davenport_p" else "")
        + f", critical difference {_number(first.get('critical_difference'), 3)}"
    )
    body = [
        [_number(row.get("mean_rank"), 3), str(row["activation"]), ", ".join(row.get("different_from") or []) or "-"]
        for row in rows
    ]
    return "\n".join([caption, *_aligned(["mean rank", "activation", "different from (Nemenyi)"], body)])


def format_effects(rows: list[dict[str, Any]]) -> str:
    """Per factor: the interaction with the activation, then the mean over seeds per level and activation."""
    if not rows or rows[0].get("factor") is None:
        return f"effects insufficient: {rows[0]['reason']}" if rows else "no factors"
    parts = []
    for factor in dict.fromkeys(row["factor"] for row in rows):
        chosen = [row for row in rows if row["factor"] == factor]
        first = chosen[0]
        if first["status"] == "ok":
            test = (
                f"activation x {factor}: p = {_number(first.get('interaction_p_value'), 3)}, "
                f"partial eta squared {_number(first.get('interaction_partial_eta_squared'), 2)}"
            )
        else:
            test = f"activation x {factor}: {first['reason']}"
        body = [
            [
                str(row["level"]),
                str(row["activation"]),
                str(row["n"]),
                _number(row.get("mean")),
                f"[{_number(row.get('ci_low'))}, {_number(row.get('ci_high'))}]",
            ]
            for row in chosen
        ]
        parts.append("\n".join([test, *_aligned(["level", "activation", "n", "mean", "95% CI"], body)]))
    return "\n\n".join(parts)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The per-activation summary as an aligned text table, best rank first (one table per cell with factors)."""
    if not rows:
        return "no activations"
    if "cell" in rows[0]:
        cells = dict.fromkeys(str(row["cell"]) for row in rows)
        return "\n\n".join(
            f"cell {cell}\n"
            + format_summary([{k: v for k, v in row.items() if k != "cell"} for row in rows if row["cell"] == cell])
            for cell in cells
        )
    ordered = sorted(rows, key=lambda row: (row.get("rank") is None, row.get("rank") or 0, row["activation_index"]))
    header = ["rank", "activation", "n", "mean", "std", "95% CI", "diverged", "verdict", "p (Holm)"]
    body = []
    for row in ordered:
        interval = f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]" if row.get("ci_low") is not None else "-"
        body.append(
            [
                _number(row.get("rank")),
                str(row["activation"]),
                str(row["n"]),
                _number(row.get("mean")),
                _number(row.get("std")),
                interval,
                str(row.get("diverged", 0)),
                str(row.get("verdict") or "-"),
                _number(row.get("p_holm"), 3),
            ]
        )
    first = rows[0]
    caption = f"{first['metric']} ({first['summary']}), baseline {first['baseline']}"
    return "\n".join([caption, *_aligned(header, body)])


def _parameters(arguments: argparse.Namespace, output_format: str) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "format": output_format,
        "metric": arguments.metric,
        "summary": arguments.summary,
        "k": arguments.k,
        "alpha": arguments.alpha,
        "view": arguments.view,
    }
    if arguments.baseline is not None:
        parameters["baseline"] = arguments.baseline
    if arguments.threshold is not None:
        parameters["threshold"] = arguments.threshold
    return parameters


def print_results(
    arguments: argparse.Namespace, *, output: TextIO, transport: httpx.BaseTransport | None = None
) -> None:
    """Fetch the results and write them to ``output`` in the requested format."""
    experiment_id = parse_experiment_id(arguments.experiment_id)
    path = f"/v1/experiments/{experiment_id}/results"
    with make_client(arguments, transport=transport) as client:
        if arguments.output_format == "csv":
            output.write(client.request("GET", path, params=_parameters(arguments, "csv")).text)
            return
        rows = client.get_json(path, params=_parameters(arguments, "json"))
        if arguments.output_format == "table" and arguments.view in ("ranking", "effects"):
            output.write((format_ranking if arguments.view == "ranking" else format_effects)(rows) + "\n")
            return
        if arguments.output_format == "json" or arguments.view != "summary":
            if arguments.output_format == "json":
                output.write(json.dumps(rows, indent=2) + "\n")
            else:
                output.write(client.request("GET", path, params=_parameters(arguments, "csv")).text)
            return
        output.write(format_summary(rows) + "\n")
        found = client.get_json(
            f"/v1/experiments/{experiment_id}/recommendation",
            params={
                "metric": arguments.metric,
                "summary": arguments.summary,
                "k": arguments.k,
                "alpha": arguments.alpha,
            },
        )
        output.write("\n" + "\n".join(f"- {sentence}" for sentence in found["sentences"]) + "\n")


def results(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Print the results of one experiment; returns the exit status."""
    try:
        print_results(arguments, output=sys.stdout, transport=transport)
        return 0
    except ClientError as error:
        print(f"actlab results: {error}", file=sys.stderr)
        return error.exit_status
