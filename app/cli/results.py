"""``actlab results ID [--format table|csv|json]``: print an experiment's cross-seed comparison.

``table`` prints the per-activation summary (rank, mean ± std, 95% CI, verdict against the
baseline) followed by the recommendation; ``csv`` and ``json`` print the service's table as it
is, ready for a file or a pipe.
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
    parser.add_argument("--view", choices=("summary", "pairs", "runs"), default="summary")
    add_connection_arguments(parser)
    parser.set_defaults(handler=results)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The per-activation summary as an aligned text table, best rank first."""
    if not rows:
        return "no activations"
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
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *body]]
    first = rows[0]
    caption = f"{first['metric']} ({first['summary']}), baseline {first['baseline']}"
    return "\n".join([caption, lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


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
