"""``actlab submit SPEC.json [--wait]`` and ``actlab status ID``: a small HTTP client of the service.

The server validates the spec; a rejection is printed field by field. ``--wait`` shows a
progress bar of finished epochs and ends with a per-activation table of final test
accuracy (mean ± standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "partial"})
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """A problem to report to the user, with the exit status to end with."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def register(subparsers: Any) -> None:
    """Add the submit and status subcommands."""
    submit_parser = subparsers.add_parser(
        "submit", help="send an experiment spec to the service", description="POST SPEC.json to /v1/experiments."
    )
    submit_parser.add_argument("spec", type=Path, metavar="SPEC.json", help="experiment spec (see examples/)")
    submit_parser.add_argument("--wait", action="store_true", help="follow progress, then print the results table")
    submit_parser.add_argument(
        "--idempotency-key", default=None, help="makes a retried submit return the same experiment"
    )
    submit_parser.add_argument(
        "--poll", type=float, default=1.0, help="seconds between status checks with --wait (default 1)"
    )
    _add_connection_arguments(submit_parser)
    submit_parser.set_defaults(handler=submit)

    status_parser = subparsers.add_parser("status", help="show an experiment's status and runs")
    status_parser.add_argument("experiment_id", metavar="ID", help="experiment id")
    _add_connection_arguments(status_parser)
    status_parser.set_defaults(handler=status)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"service address (default: $ACTLAB_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer key (default: $ACTLAB_API_KEY, else the key `actlab serve` saved for this URL)",
    )


def service_url(arguments: argparse.Namespace) -> str:
    """The service URL: --url, else $ACTLAB_URL, else the local default."""
    return str(arguments.url or os.environ.get("ACTLAB_URL") or DEFAULT_URL).rstrip("/")


def _stored_key(url: str) -> str | None:
    """The key `actlab serve` stored for this URL in the credentials file, if any."""
    from app.auth.local import read_local_key

    return read_local_key(url)


def make_client(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An HTTP client for the service, with the bearer key when one is configured."""
    headers = {"Accept": "application/json"}
    api_key = arguments.api_key or os.environ.get("ACTLAB_API_KEY") or _stored_key(service_url(arguments))
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(base_url=service_url(arguments), headers=headers, timeout=30.0, transport=transport)


def _detail_lines(response: httpx.Response) -> list[str]:
    """The server's error detail as lines: one per field for a 422."""
    try:
        body = response.json()
    except ValueError:
        return [response.text.strip() or response.reason_phrase]
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict):
                location = item.get("loc", "")
                if isinstance(location, list):
                    location = ".".join(str(part) for part in location)
                lines.append(f"{location or '(body)'}: {item.get('msg', item)}")
            else:
                lines.append(str(item))
        return lines
    return [str(detail)]


def _request(client: httpx.Client, method: str, path: str, **options: Any) -> httpx.Response:
    """Send a request; turn connection problems and error statuses into ClientError."""
    try:
        response = client.request(method, path, **options)
    except httpx.TransportError as error:
        raise ClientError(
            f"cannot reach the service at {client.base_url} ({type(error).__name__}: {error}); "
            "is it running? Start it with `actlab serve`, or pass --url"
        ) from error
    if response.status_code == 422:
        lines = _detail_lines(response)
        raise ClientError(
            "the service rejected the request:\n" + "\n".join(f"  {line}" for line in lines),
            exit_status=EXIT_BAD_INPUT,
        )
    if response.status_code >= 400:
        lines = _detail_lines(response)
        status = EXIT_BAD_INPUT if response.status_code in (400, 404, 409, 413) else EXIT_FAILED
        raise ClientError(f"HTTP {response.status_code}: " + "; ".join(lines), exit_status=status)
    return response


def read_spec(path: Path) -> Any:
    """The JSON document in ``path``; unreadable or malformed files are a ClientError naming the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror or error}", exit_status=EXIT_BAD_INPUT) from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ClientError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
            exit_status=EXIT_BAD_INPUT,
        ) from error


@dataclass(frozen=True)
class ActivationResult:
    """Final test accuracy of one activation over its seeds."""

    activation: str
    runs: int
    mean: float | None
    std: float | None


def summarise_final_accuracy(rows: Iterable[dict[str, Any]]) -> list[ActivationResult]:
    """Per activation (in first-seen order): mean and sample std of each run's last-epoch test accuracy."""
    last_rows: dict[str, dict[str, Any]] = {}
    order: dict[str, None] = {}
    for row in rows:
        run_id = str(row["run_id"])
        order.setdefault(str(row["activation"]), None)
        if run_id not in last_rows or row["epoch"] > last_rows[run_id]["epoch"]:
            last_rows[run_id] = row
    results = []
    for activation in order:
        values = [
            float(row["test_accuracy"])
            for row in last_rows.values()
            if row["activation"] == activation and row.get("test_accuracy") is not None
        ]
        values = [value for value in values if math.isfinite(value)]
        runs = sum(1 for row in last_rows.values() if row["activation"] == activation)
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else None
        results.append(ActivationResult(activation, runs, mean, std))
    return results


def format_results_table(results: list[ActivationResult]) -> str:
    """A plain-text table: activation, runs, final test accuracy as mean ± std (in percent)."""
    header = ("activation", "runs", "final test accuracy")
    cells = []
    for result in results:
        if result.mean is None:
            accuracy = "n/a"
        elif result.std is None:
            accuracy = f"{100 * result.mean:.2f}%"
        else:
            accuracy = f"{100 * result.mean:.2f}% ± {100 * result.std:.2f}"
        cells.append((result.activation, str(result.runs), accuracy))
    widths = [max(len(row[index]) for row in [header, *cells]) for index in range(3)]
    lines = [
        f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:<{widths[2]}}",
        f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * widths[2]}",
    ]
    lines += [f"{name:<{widths[0]}}  {runs:>{widths[1]}}  {accuracy}" for name, runs, accuracy in cells]
    return "\n".join(lines)


def format_experiment(experiment: dict[str, Any]) -> str:
    """A few lines about an experiment and each of its runs."""
    progress = experiment.get("progress") or {}
    lines = [
        f"experiment {experiment['id']}  {experiment.get('name', '')}",
        f"status: {experiment['status']}   epochs: {progress.get('finished_epochs', 0)}/"
        f"{progress.get('total_epochs', 0)}   queue: {experiment.get('queue')}",
    ]
    if experiment.get("error"):
        lines.append(f"error: {experiment['error']}")
    runs = experiment.get("runs") or []
    if runs:
        lines.append("runs:")
        width = max(len(str(run.get("activation", ""))) for run in runs)
        for run in runs:
            line = (
                f"  {run['activation']:<{width}}  seed {run['seed']:<6}  {run['status']:<10}  "
                f"epochs {run.get('epochs_completed', 0)}  attempt {run.get('attempt', 0)}"
            )
            if run.get("error"):
                line += f"  error: {run['error']}"
            lines.append(line)
    return "\n".join(lines)


def wait_for_experiment(
    client: httpx.Client,
    experiment_id: str,
    *,
    poll_seconds: float,
    output: TextIO,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the experiment with a progress bar of finished epochs until it ends; returns its last state."""
    from tqdm import tqdm

    experiment = _request(client, "GET", f"/v1/experiments/{experiment_id}").json()
    total = int((experiment.get("progress") or {}).get("total_epochs") or 0)
    with tqdm(total=total, unit="epoch", file=output, dynamic_ncols=True, leave=True) as bar:
        while True:
            progress = experiment.get("progress") or {}
            bar.n = min(total, int(progress.get("finished_epochs") or 0))
            bar.set_postfix_str(
                f"{experiment['status']}, runs {progress.get('runs_finished', 0)}/{progress.get('runs_total', 0)}",
                refresh=False,
            )
            bar.refresh()
            if experiment["status"] in FINISHED_STATUSES:
                return experiment
            sleep(poll_seconds)
            experiment = _request(client, "GET", f"/v1/experiments/{experiment_id}").json()


def _print_results(client: httpx.Client, experiment: dict[str, Any], output: TextIO) -> None:
    rows = _request(client, "GET", f"/v1/experiments/{experiment['id']}/metrics", params={"format": "json"}).json()
    print(f"\nexperiment {experiment['id']} {experiment['status']}", file=output)
    if experiment.get("error"):
        print(f"error: {experiment['error']}", file=output)
    if rows:
        print(format_results_table(summarise_final_accuracy(rows)), file=output)
    else:
        print("no epoch finished, so there are no metrics", file=output)


def submit(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """POST the spec; with --wait, follow it to the end and print the results table."""
    output = sys.stdout
    try:
        spec = read_spec(arguments.spec)
        headers = {}
        if arguments.idempotency_key:
            headers["Idempotency-Key"] = arguments.idempotency_key
        with make_client(arguments, transport=transport) as client:
            response = _request(client, "POST", "/v1/experiments", json=spec, headers=headers)
            experiment = response.json()
            verb = "submitted" if response.status_code == 202 else "already submitted (same Idempotency-Key)"
            runs = experiment.get("runs") or []
            print(
                f"experiment {experiment['id']} {verb}: {len(runs)} run(s) on queue {experiment.get('queue')}",
                file=output,
            )
            if not arguments.wait:
                print(f"follow it with: actlab status {experiment['id']}", file=output)
                return 0
            try:
                experiment = wait_for_experiment(
                    client, str(experiment["id"]), poll_seconds=arguments.poll, output=sys.stderr
                )
            except KeyboardInterrupt:
                print(f"\nstopped waiting; the experiment goes on: actlab status {experiment['id']}", file=sys.stderr)
                return EXIT_INTERRUPTED
            _print_results(client, experiment, output)
            return 0 if experiment["status"] == "succeeded" else EXIT_FAILED
    except ClientError as error:
        print(f"actlab submit: {error}", file=sys.stderr)
        return error.exit_status


def status(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Print an experiment's status and its runs."""
    try:
        try:
            experiment_id = str(uuid.UUID(arguments.experiment_id))
        except ValueError as error:
            raise ClientError(
                f"{arguments.experiment_id!r} is not an experiment id (a UUID)", exit_status=EXIT_BAD_INPUT
            ) from error
        with make_client(arguments, transport=transport) as client:
            experiment = _request(client, "GET", f"/v1/experiments/{experiment_id}").json()
        print(format_experiment(experiment))
        return 0
    except ClientError as error:
        print(f"actlab status: {error}", file=sys.stderr)
        return error.exit_status
