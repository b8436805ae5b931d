"""``actlab mirror mlflow ID`` and ``actlab export ID``: an experiment into the tools people already use.

``mirror mlflow`` logs every run into an MLflow tracking server (actlab/mlflow.py says the layout; again
later, it appends only what is new). ``export`` downloads the re-importable archive (``--format zip``) or
TensorBoard event files (``--format tensorboard``; unzip and ``tensorboard --logdir`` the folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from actlab.client import Client
from actlab.connection import resolve_api_key
from actlab.errors import EXIT_BAD_INPUT, ClientError
from app.cli.connection import add_connection_arguments, make_client, parse_experiment_id, service_url, stored_key

EXPORT_FORMATS = ("zip", "tensorboard")


def register(subparsers: Any) -> None:
    """Add the mirror and export subcommands."""
    mirror = subparsers.add_parser(
        "mirror",
        help="mirror an experiment into MLflow",
        description="Log every run of an experiment as an MLflow run (params, per-epoch metrics, tags linking "
        "back, the results and plots as artifacts). Running it again appends new epochs and never duplicates.",
    )
    targets = mirror.add_subparsers(dest="target", required=True, metavar="TARGET")
    mlflow = targets.add_parser("mlflow", help="an MLflow tracking server")
    mlflow.add_argument("experiment_id", metavar="ID", help="experiment id")
    mlflow.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. http://127.0.0.1:5000")
    mlflow.add_argument("--experiment-name", default=None, help="MLflow experiment (default: 'actlab <name>')")
    mlflow.add_argument("--no-artifacts", action="store_true", help="skip the results table and plots")
    add_connection_arguments(mlflow)
    mlflow.set_defaults(handler=mirror_mlflow)

    export = subparsers.add_parser(
        "export",
        help="download an experiment as a zip archive or TensorBoard event files",
        description="GET /v1/experiments/ID/export?format=zip|tensorboard and save it.",
    )
    export.add_argument("experiment_id", metavar="ID", help="experiment id")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="zip", dest="export_format")
    export.add_argument("-o", "--output", default=None, help="file to write (default: the name the server gives)")
    add_connection_arguments(export)
    export.set_defaults(handler=export_experiment)


def mirror_mlflow(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Mirror one experiment into MLflow; returns the exit status."""
    from actlab.mlflow import mirror_to_mlflow

    try:
        experiment_id = parse_experiment_id(arguments.experiment_id)
        url = service_url(arguments)
        api_key = resolve_api_key(arguments.api_key, url, saved_key=stored_key)
        with Client(url, api_key, transport=transport) as client:
            summary = mirror_to_mlflow(
                client.experiment(experiment_id),
                tracking_uri=arguments.tracking_uri,
                experiment_name=arguments.experiment_name,
                artifacts=not arguments.no_artifacts,
            )
    except ClientError as error:
        print(f"actlab mirror mlflow: {error}", file=sys.stderr)
        return error.exit_status
    print(
        f"mirrored into MLflow experiment {summary.mlflow_experiment_id} (parent run {summary.parent_run_id}): "
        f"{summary.runs_created} runs created, {summary.runs_found} found, {summary.metrics_logged} metric values"
    )
    return 0


def _download_name(response: httpx.Response, fallback: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    if "filename=" in disposition:
        name = disposition.split("filename=", 1)[1].strip().strip('"')
        return Path(name).name or fallback
    return fallback


def export_experiment(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Save an experiment's archive; returns the exit status."""
    try:
        experiment_id = parse_experiment_id(arguments.experiment_id)
        with make_client(arguments, transport=transport) as client:
            response = client.request(
                "GET", f"/v1/experiments/{experiment_id}/export", params={"format": arguments.export_format}
            )
        target = Path(arguments.output or _download_name(response, f"actlab-{experiment_id}.zip"))
        try:
            target.write_bytes(response.content)
        except OSError as error:
            raise ClientError(
                f"cannot write {target}: {error.strerror or error}", exit_status=EXIT_BAD_INPUT
            ) from error
    except ClientError as error:
        print(f"actlab export: {error}", file=sys.stderr)
        return error.exit_status
    print(f"wrote {target} ({len(response.content):,} bytes)")
    return 0
