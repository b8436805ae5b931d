"""``actlab submit SPEC.json [--wait]``, ``actlab list``, ``actlab status [ID]``, ``actlab open [ID]``,
``actlab extend ID --seeds 3 4`` and ``actlab retry ID``: the experiment commands of the client.

``list``, ``status`` and ``open`` without an id use ``actlab.Client.experiments`` (GET /v1/experiments,
newest first, pages fetched as needed); without an id, ``status`` and ``open`` take the newest experiment.

The server validates the spec; a rejection is printed field by field. ``--wait`` follows the
experiment with ``actlab.events`` (server-sent events of GET /v1/experiments/ID/events, reconnects
with backoff, status polling only when the events endpoint is missing or stays unreachable) drawn as
a progress bar of finished epochs, and ends with the per-activation table of
GET /v1/experiments/ID/results (the one ``actlab results`` prints). ``--timeout`` bounds the
wait; Ctrl-C stops waiting (the experiment goes on) and names the experiment to come back to.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import webbrowser
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from actlab.client import Client, Experiment
from actlab.errors import NotFound
from actlab.events import WaitTimeoutError
from actlab.http import EXIT_BAD_INPUT, EXIT_FAILED, ClientError, ServiceClient
from app.cli.connection import add_connection_arguments, make_client, make_library_client, parse_experiment_id
from app.cli.progress import wait_for_experiment
from app.cli.results import format_summary
from app.cli.train import positive_count

EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 130
LIST_LIMIT = 20
LIST_PAGE_SIZE = 100


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
        "--timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help=f"with --wait, stop waiting after this many seconds (exit status {EXIT_TIMED_OUT}); default: no limit",
    )
    submit_parser.add_argument(
        "--poll",
        type=float,
        default=1.0,
        help="with --wait, seconds between status checks when the event stream is unavailable (default 1)",
    )
    add_connection_arguments(submit_parser)
    submit_parser.set_defaults(handler=submit)

    list_parser = subparsers.add_parser(
        "list",
        help="list experiments, newest first",
        description="GET /v1/experiments: id, name, status, progress (finished/planned epochs) and creation "
        "time (UTC) of this key's experiments, newest first.",
    )
    list_parser.add_argument(
        "--status",
        action="append",
        default=None,
        metavar="STATUS",
        help="keep only this status (repeatable): queued, running, succeeded, failed, cancelled, partial",
    )
    list_parser.add_argument("--name", default=None, help="keep names containing this text (any case)")
    list_parser.add_argument(
        "--dataset",
        default=None,
        help="keep experiments on this catalog dataset (the spec's, or a level of a dataset.name factor)",
    )
    list_parser.add_argument(
        "--limit",
        type=positive_count,
        default=LIST_LIMIT,
        metavar="N",
        help=f"show at most N experiments (default {LIST_LIMIT})",
    )
    add_connection_arguments(list_parser)
    list_parser.set_defaults(handler=list_experiments)

    status_parser = subparsers.add_parser("status", help="show an experiment's status and runs")
    status_parser.add_argument(
        "experiment_id", metavar="ID", nargs="?", default=None, help="experiment id (default: the newest)"
    )
    add_connection_arguments(status_parser)
    status_parser.set_defaults(handler=status)

    open_parser = subparsers.add_parser(
        "open",
        help="print (or open) an experiment's report URL",
        description="Print the address of the experiment's HTML report; --browser also opens it.",
    )
    open_parser.add_argument(
        "experiment_id", metavar="ID", nargs="?", default=None, help="experiment id (default: the newest)"
    )
    open_parser.add_argument("--browser", action="store_true", help="open the report in the default web browser")
    add_connection_arguments(open_parser)
    open_parser.set_defaults(handler=open_report)

    extend_parser = subparsers.add_parser(
        "extend",
        help="add seeds to an experiment",
        description="POST /v1/experiments/ID/seeds: one more run per activation for each new seed, paired with "
        "the runs already there; the results then count every seed.",
    )
    extend_parser.add_argument("experiment_id", metavar="ID", help="experiment id")
    extend_parser.add_argument(
        "--seeds", type=int, nargs="+", required=True, metavar="SEED", help="new seeds (integers >= 0)"
    )
    add_connection_arguments(extend_parser)
    extend_parser.set_defaults(handler=extend)

    retry_parser = subparsers.add_parser(
        "retry",
        help="requeue an experiment's failed and timed-out runs",
        description="POST /v1/experiments/ID/retry: failed and timed-out runs go back to the queue and resume "
        "from their checkpoints; diverged and succeeded runs stay.",
    )
    retry_parser.add_argument("experiment_id", metavar="ID", help="experiment id")
    add_connection_arguments(retry_parser)
    retry_parser.set_defaults(handler=retry)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


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


def _print_metrics_summary(client: ServiceClient, experiment_id: str, output: TextIO) -> None:
    """The final test accuracy per activation from the raw metrics (services without the results endpoint)."""
    rows = client.get_json(f"/v1/experiments/{experiment_id}/metrics", params={"format": "json"})
    if rows:
        print(format_results_table(summarise_final_accuracy(rows)), file=output)
    else:
        print("no epoch finished, so there are no metrics", file=output)


def print_final_results(client: ServiceClient, experiment: dict[str, Any], output: TextIO) -> None:
    """The experiment's final status and its per-activation results table, as `actlab results` prints it."""
    experiment_id = str(experiment["id"])
    print(f"\nexperiment {experiment_id} {experiment['status']}", file=output)
    if experiment.get("error"):
        print(f"error: {experiment['error']}", file=output)
    try:
        rows = client.get_json(f"/v1/experiments/{experiment_id}/results", params={"format": "json"})
    except ClientError as error:
        if error.http_status != 404:
            raise
        _print_metrics_summary(client, experiment_id, output)
        return
    if any(row.get("n") for row in rows):
        print(format_summary(rows), file=output)
    else:
        print("no run succeeded, so there is nothing to compare", file=output)
    print(f"verdicts, recommendation, CSV/JSON: actlab results {experiment_id}", file=output)


def submit(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """POST the spec; with --wait, follow it to the end and print the results table."""
    output = sys.stdout
    experiment_id: str | None = None
    try:
        spec = read_spec(arguments.spec)
        headers = {}
        if arguments.idempotency_key:
            headers["Idempotency-Key"] = arguments.idempotency_key
        with make_client(arguments, transport=transport) as client:
            response = client.request("POST", "/v1/experiments", json=spec, headers=headers)
            experiment = response.json()
            experiment_id = str(experiment["id"])
            verb = "submitted" if response.status_code == 202 else "already submitted (same Idempotency-Key)"
            runs = experiment.get("runs") or []
            print(
                f"experiment {experiment_id} {verb}: {len(runs)} run(s) on queue {experiment.get('queue')}",
                file=output,
            )
            links = experiment.get("links") or {}
            plots = links.get("plots") or {}
            for name, path in (
                ("report", links.get("report")),
                ("learning curves", plots.get("learning-curves")),
                ("activations", plots.get("activations")),
            ):
                if path:
                    print(f"{name}: {client.base_url.join(path)}", file=output)
            output.flush()
            if not arguments.wait:
                print(f"follow it with: actlab status {experiment_id}", file=output)
                return 0
            experiment = wait_for_experiment(
                client,
                experiment_id,
                poll_seconds=arguments.poll,
                output=sys.stderr,
                timeout_seconds=arguments.timeout,
            )
            print_final_results(client, experiment, output)
            return 0 if experiment["status"] == "succeeded" else EXIT_FAILED
    except WaitTimeoutError:
        print(
            f"\nstopped waiting after {arguments.timeout:g} s (--timeout); the experiment goes on: "
            f"actlab status {experiment_id}",
            file=sys.stderr,
        )
        return EXIT_TIMED_OUT
    except KeyboardInterrupt:
        if experiment_id is None:
            print("\ninterrupted before the service answered", file=sys.stderr)
        else:
            print(f"\nstopped waiting; the experiment goes on: actlab status {experiment_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ClientError as error:
        print(f"actlab submit: {error}", file=sys.stderr)
        if experiment_id is not None and arguments.wait:
            print(f"check on the experiment with: actlab status {experiment_id}", file=sys.stderr)
        return error.exit_status


def _created(text: str | None) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM:SS`` in UTC."""
    if not text:
        return ""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment.astimezone(UTC) if moment.tzinfo else moment).strftime("%Y-%m-%d %H:%M:%S")


def format_experiment_list(experiments: Iterable[dict[str, Any]]) -> str:
    """A plain-text table: id, name, status, progress (finished/planned epochs), created (UTC)."""
    header = ("id", "name", "status", "progress", "created (UTC)")
    cells = []
    for experiment in experiments:
        progress = experiment.get("progress") or {}
        cells.append(
            (
                str(experiment["id"]),
                str(experiment.get("name") or ""),
                str(experiment["status"]),
                f"{progress.get('finished_epochs', 0)}/{progress.get('total_epochs', 0)}",
                _created(experiment.get("created_at")),
            )
        )
    widths = [max(len(row[index]) for row in [header, *cells]) for index in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *cells]
    )


def list_experiments(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Print the newest experiments (at most --limit) matching --status, --name and --dataset."""
    try:
        with make_library_client(arguments, transport=transport) as client:
            pages = client.experiments(
                arguments.status,
                arguments.name,
                dataset=arguments.dataset,
                page_size=min(arguments.limit + 1, LIST_PAGE_SIZE),
            )
            # One more than shown, to tell whether there are more.
            experiments = [experiment.data for experiment in itertools.islice(pages, arguments.limit + 1)]
    except ClientError as error:
        print(f"actlab list: {error}", file=sys.stderr)
        return error.exit_status
    shown = experiments[: arguments.limit]
    if not shown:
        filtered = arguments.status or arguments.name or arguments.dataset
        print("no experiments match" if filtered else "no experiments yet: actlab submit SPEC.json", file=sys.stderr)
        return 0
    print(format_experiment_list(shown))
    if len(experiments) > arguments.limit:
        print(f"(the newest {arguments.limit}; --limit N shows more)", file=sys.stderr)
    return 0


def _chosen_experiment(client: Client, experiment_id: str | None) -> Experiment:
    """The experiment with this id, else the newest one; NotFound when there is none."""
    if experiment_id is not None:
        return client.experiment(parse_experiment_id(experiment_id))
    newest = next(iter(client.experiments(page_size=1)), None)
    if newest is None:
        raise NotFound("there are no experiments yet: actlab submit SPEC.json")
    newest.status()
    return newest


def status(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Print an experiment's status and its runs (the newest experiment's without an id)."""
    try:
        with make_library_client(arguments, transport=transport) as client:
            experiment = _chosen_experiment(client, arguments.experiment_id)
        print(format_experiment(experiment.data))
        return 0
    except ClientError as error:
        print(f"actlab status: {error}", file=sys.stderr)
        return error.exit_status


def open_report(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Print the report URL of an experiment (the newest without an id); --browser also opens it."""
    try:
        with make_library_client(arguments, transport=transport) as client:
            url = _chosen_experiment(client, arguments.experiment_id).report_url
    except ClientError as error:
        print(f"actlab open: {error}", file=sys.stderr)
        return error.exit_status
    print(url)
    if arguments.browser:
        sys.stdout.flush()
        if not webbrowser.open(url):
            print("actlab open: no web browser could be started; open the address above", file=sys.stderr)
            return EXIT_FAILED
    return 0


def _run_list(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{run['activation']} seed {run['seed']}" for run in runs)


def extend(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """POST the new seeds; print the runs they added."""
    try:
        experiment_id = parse_experiment_id(arguments.experiment_id)
        with make_client(arguments, transport=transport) as client:
            added = client.request(
                "POST", f"/v1/experiments/{experiment_id}/seeds", json={"seeds": arguments.seeds}
            ).json()
        seeds = ", ".join(str(seed) for seed in added["seeds"])
        print(
            f"experiment {experiment_id}: seeds {seeds} added, {len(added['runs'])} new run(s) queued "
            f"({_run_list(added['runs'])}); status {added['experiment']['status']}"
        )
        print(f"follow it with: actlab status {experiment_id}")
        return 0
    except ClientError as error:
        print(f"actlab extend: {error}", file=sys.stderr)
        return error.exit_status


def retry(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """POST a retry; print the runs it requeued."""
    try:
        experiment_id = parse_experiment_id(arguments.experiment_id)
        with make_client(arguments, transport=transport) as client:
            retried = client.request("POST", f"/v1/experiments/{experiment_id}/retry").json()
        print(
            f"experiment {experiment_id}: {len(retried['runs'])} run(s) requeued ({_run_list(retried['runs'])}); "
            f"status {retried['experiment']['status']}"
        )
        print(f"follow it with: actlab status {experiment_id}")
        return 0
    except ClientError as error:
        print(f"actlab retry: {error}", file=sys.stderr)
        return error.exit_status
