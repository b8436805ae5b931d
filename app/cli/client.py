"""``actlab submit SPEC.json [--wait]`` and ``actlab status ID``: a small HTTP client of the service.

The server validates the spec; a rejection is printed field by field. ``--wait`` follows the
experiment's server-sent events (GET /v1/experiments/ID/events) with a progress bar of finished
epochs, reconnects with backoff when the stream breaks, polls the status only when the events
endpoint is missing or stays unreachable, and ends with the per-activation table of
GET /v1/experiments/ID/results (the one ``actlab results`` prints). ``--timeout`` bounds the
wait; Ctrl-C stops waiting (the experiment goes on) and names the experiment to come back to.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "partial"})
FINISHED_RUN_STATUSES = frozenset({"succeeded", "failed", "diverged", "cancelled", "timed_out"})
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMED_OUT = 124
EXIT_INTERRUPTED = 130

# The server sends a heartbeat comment every 15 s, so a stream silent for this long is dead.
EVENTS_STALL_SECONDS = 60.0
RECONNECT_ATTEMPTS = 5
RECONNECT_FIRST_DELAY_SECONDS = 1.0
RECONNECT_MAX_DELAY_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0


class ClientError(Exception):
    """A problem to report to the user, with the exit status to end with."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILED, http_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.http_status = http_status


class ServiceUnreachableError(ClientError):
    """The service did not answer at all (connection refused, timeout, broken connection)."""


class WaitTimeoutError(Exception):
    """--timeout ran out before the experiment finished."""


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
    _add_connection_arguments(submit_parser)
    submit_parser.set_defaults(handler=submit)

    status_parser = subparsers.add_parser("status", help="show an experiment's status and runs")
    status_parser.add_argument("experiment_id", metavar="ID", help="experiment id")
    _add_connection_arguments(status_parser)
    status_parser.set_defaults(handler=status)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


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
        raise ServiceUnreachableError(
            f"cannot reach the service at {client.base_url} ({type(error).__name__}: {error}); "
            "is it running? Start it with `actlab serve`, or pass --url"
        ) from error
    if response.status_code == 422:
        lines = _detail_lines(response)
        raise ClientError(
            "the service rejected the request:\n" + "\n".join(f"  {line}" for line in lines),
            exit_status=EXIT_BAD_INPUT,
            http_status=422,
        )
    if response.status_code >= 400:
        lines = _detail_lines(response)
        status = EXIT_BAD_INPUT if response.status_code in (400, 404, 409, 413) else EXIT_FAILED
        raise ClientError(
            f"HTTP {response.status_code}: " + "; ".join(lines), exit_status=status, http_status=response.status_code
        )
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


@dataclass(frozen=True)
class ServerSentEvent:
    """One complete server-sent event: its name, its data lines joined, and the stream's last id."""

    event: str
    data: str
    last_event_id: str

    def payload(self) -> dict[str, Any]:
        """The data as a JSON object; an empty dict when it is not one."""
        try:
            value = json.loads(self.data)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


class ServerSentEventParser:
    """Turns the lines of a text/event-stream into events, following the WHATWG parsing rules."""

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry_milliseconds: int | None = None
        self._event_type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its line ending); returns the event that a blank line completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, separator, value = line.partition(":")
        if separator and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_milliseconds = int(value)
        return None

    def discard_pending(self) -> None:
        """Forget a half-received event: its stream broke before the blank line that ends it."""
        self._event_type = ""
        self._data = []

    def _dispatch(self) -> ServerSentEvent | None:
        data, event_type = self._data, self._event_type
        self.discard_pending()
        if not data:
            return None
        return ServerSentEvent(event=event_type or "message", data="\n".join(data), last_event_id=self.last_event_id)


class ProgressDisplay:
    """What --wait knows about the experiment, shown as a bar of finished epochs with status and runs."""

    def __init__(self, bar: Any, experiment: dict[str, Any]) -> None:
        self.bar = bar
        self.status = ""
        self.total_epochs = 0
        self.finished_epochs = 0
        self.runs_total = 0
        self.runs_finished = 0
        self.run_statuses: dict[str, str] = {}
        self.latest = ""
        # Counts changes, so the follower can tell a stream that made progress from one that only replayed.
        self.changes = 0
        self.apply_experiment(experiment)

    @property
    def finished(self) -> bool:
        """True once the experiment reached a final status."""
        return self.status in FINISHED_STATUSES

    def _state(self) -> tuple[Any, ...]:
        return (self.status, self.total_epochs, self.finished_epochs, self.runs_finished, self.runs_total)

    def _settle(self, before: tuple[Any, ...]) -> None:
        if self.run_statuses:
            self.runs_total = max(self.runs_total, len(self.run_statuses))
            self.runs_finished = sum(1 for status in self.run_statuses.values() if status in FINISHED_RUN_STATUSES)
        if self._state() != before:
            self.changes += 1
        self.render()

    def apply_experiment(self, experiment: dict[str, Any]) -> None:
        """Take the state of GET /v1/experiments/ID."""
        before = self._state()
        progress = experiment.get("progress") or {}
        self.status = str(experiment.get("status", self.status))
        self.total_epochs = int(progress.get("total_epochs") or self.total_epochs)
        self.finished_epochs = max(self.finished_epochs, int(progress.get("finished_epochs") or 0))
        self.runs_total = int(progress.get("runs_total") or self.runs_total)
        self.runs_finished = int(progress.get("runs_finished") or 0)
        for run in experiment.get("runs") or []:
            if "id" in run and "status" in run:
                self.run_statuses[str(run["id"])] = str(run["status"])
        self._settle(before)

    def apply_event(self, event: ServerSentEvent) -> bool:
        """Take one event of the stream; True when it is the final ``end`` event."""
        before = self._state()
        data = event.payload()
        if event.event == "epoch":
            # A reconnected stream replays the stored epochs from the start: never move the bar back.
            self.finished_epochs = max(self.finished_epochs, int(data.get("epochs_finished") or 0))
            self.total_epochs = int(data.get("epochs_total") or self.total_epochs)
            self.latest = f"{data.get('activation')} seed {data.get('seed')} epoch {data.get('epoch')}"
            accuracy = data.get("test_accuracy")
            if isinstance(accuracy, int | float) and math.isfinite(accuracy):
                self.latest += f" test acc {100 * accuracy:.1f}%"
        elif event.event == "status" and data.get("scope") == "run" and "run_id" in data:
            self.run_statuses[str(data["run_id"])] = str(data.get("status"))
        elif event.event == "status" and data.get("scope") == "experiment":
            self.status = str(data.get("status", self.status))
            self.total_epochs = int(data.get("epochs_total") or self.total_epochs)
            self.finished_epochs = max(self.finished_epochs, int(data.get("epochs_finished") or 0))
        elif event.event == "end":
            if "status" not in data:
                raise ClientError(f"the service ended the event stream: {data.get('reason', 'no reason given')}")
            self.status = str(data["status"])
            self._settle(before)
            return True
        self._settle(before)
        return False

    def render(self) -> None:
        """Redraw the bar."""
        self.bar.total = self.total_epochs
        self.bar.n = min(self.finished_epochs, self.total_epochs) if self.total_epochs else self.finished_epochs
        postfix = f"{self.status}, runs {self.runs_finished}/{self.runs_total}"
        if self.latest:
            postfix += f", {self.latest}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()


def _read_event_lines(
    *,
    client: httpx.Client,
    path: str,
    headers: dict[str, str],
    stall_seconds: float,
    sink: queue.Queue[tuple[str, Any]],
    stop: threading.Event,
) -> None:
    """Put the response, then each line of one events request on ``sink``, then how it ended (a thread's job).

    Reading in a thread keeps the waiting side free to honour --timeout and Ctrl-C at once,
    whatever the socket does.
    """
    try:
        timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=stall_seconds)
        with client.stream("GET", path, headers=headers, timeout=timeout) as response:
            streaming = response.status_code == 200 and response.headers.get("content-type", "").startswith(
                "text/event-stream"
            )
            if not streaming:
                response.read()
            sink.put(("response", response))
            if not streaming:
                return
            for line in response.iter_lines():
                if stop.is_set():
                    return
                sink.put(("line", line))
        sink.put(("closed", None))
    except httpx.HTTPError as error:
        sink.put(("broken", error))
    except Exception as error:  # handed to the waiting side, which raises it
        sink.put(("raised", error))


def _remaining_seconds(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise WaitTimeoutError
    return remaining


def _request_timeout(deadline: float | None) -> float:
    """The timeout of one request: the usual one, cut to what --timeout leaves."""
    remaining = _remaining_seconds(deadline)
    return REQUEST_TIMEOUT_SECONDS if remaining is None else min(REQUEST_TIMEOUT_SECONDS, remaining)


class ExperimentFollower:
    """Follows one experiment to its end: the event stream first, status polling as the fallback."""

    def __init__(
        self,
        *,
        client: httpx.Client,
        experiment_id: str,
        display: ProgressDisplay,
        poll_seconds: float,
        deadline: float | None,
        sleep: Callable[[float], None] = time.sleep,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
        reconnect_delay_seconds: float | None = None,
        stall_seconds: float = EVENTS_STALL_SECONDS,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.display = display
        self.poll_seconds = poll_seconds
        # On the time.monotonic() clock; None: wait as long as it takes.
        self.deadline = deadline
        self.sleep = sleep
        self.reconnect_attempts = reconnect_attempts
        # None: the server's `retry:` advice, else one second.
        self.reconnect_delay_seconds = reconnect_delay_seconds
        self.stall_seconds = stall_seconds

    def follow(self) -> None:
        """Return once the experiment finished; WaitTimeoutError when --timeout ran out first."""
        if self.display.finished:
            return
        if not self._follow_events():
            self._poll()

    def remaining_seconds(self) -> float | None:
        """Seconds left before --timeout (None: no limit); WaitTimeoutError once none are left."""
        return _remaining_seconds(self.deadline)

    def _pause(self, seconds: float) -> None:
        remaining = self.remaining_seconds()
        self.sleep(seconds if remaining is None else min(seconds, remaining))
        self.remaining_seconds()

    def _backoff_seconds(self, failures: int, parser: ServerSentEventParser | None = None) -> float:
        first = self.reconnect_delay_seconds
        if first is None:
            advised = parser.retry_milliseconds if parser is not None else None
            first = advised / 1000 if advised is not None else RECONNECT_FIRST_DELAY_SECONDS
        return float(min(RECONNECT_MAX_DELAY_SECONDS, first * 2 ** (failures - 1)))

    def _follow_events(self) -> bool:
        """Follow the event stream to its end event; False when it is unavailable and polling must take over."""
        parser = ServerSentEventParser()
        failures = 0
        while True:
            changes = self.display.changes
            outcome = self._read_one_stream(parser)
            if outcome == "ended":
                return True
            if outcome == "unsupported":
                return False
            # Broken: count the failures in a row that brought nothing new, so a flapping stream is bounded.
            failures = 1 if self.display.changes > changes else failures + 1
            if failures > self.reconnect_attempts:
                return False
            self._pause(self._backoff_seconds(failures, parser))

    def _next_item(self, sink: queue.Queue[tuple[str, Any]]) -> tuple[str, Any]:
        while True:
            remaining = self.remaining_seconds()
            try:
                # Short waits keep Ctrl-C and the deadline prompt on every platform.
                return sink.get(timeout=1.0 if remaining is None else min(1.0, remaining))
            except queue.Empty:
                continue

    def _read_one_stream(self, parser: ServerSentEventParser) -> str:
        """One connection to the events endpoint: 'ended', 'broken' or 'unsupported'."""
        parser.discard_pending()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if parser.last_event_id:
            headers["Last-Event-ID"] = parser.last_event_id
        sink: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(
            target=_read_event_lines,
            kwargs={
                "client": self.client,
                "path": f"/v1/experiments/{self.experiment_id}/events",
                "headers": headers,
                "stall_seconds": self.stall_seconds,
                "sink": sink,
                "stop": stop,
            },
            name=f"actlab-events-{self.experiment_id}",
            daemon=True,
        )
        reader.start()
        try:
            while True:
                kind, value = self._next_item(sink)
                if kind == "response":
                    outcome = self._judge_response(value)
                    if outcome is not None:
                        return outcome
                elif kind == "line":
                    event = parser.feed(value)
                    if event is not None and self.display.apply_event(event):
                        return "ended"
                elif kind == "raised":
                    raise value
                else:
                    return "broken"
        finally:
            stop.set()

    @staticmethod
    def _judge_response(response: httpx.Response) -> str | None:
        """None when the response is the event stream; else what its status means for the follower."""
        if response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream"):
            return None
        # A service (or proxy) without the events endpoint: the status resource still works.
        if response.status_code in (200, 404, 405, 406, 501):
            return "unsupported"
        if response.status_code >= 500:
            return "broken"
        raise ClientError(
            f"HTTP {response.status_code} from the events stream: " + "; ".join(_detail_lines(response)),
            http_status=response.status_code,
        )

    def _poll(self) -> None:
        """Check the status every --poll seconds until the experiment finished."""
        path = f"/v1/experiments/{self.experiment_id}"
        failures = 0
        while not self.display.finished:
            self._pause(self.poll_seconds)
            try:
                experiment = _request(self.client, "GET", path, timeout=_request_timeout(self.deadline)).json()
            except ServiceUnreachableError:
                failures += 1
                if failures > self.reconnect_attempts:
                    raise
                self._pause(self._backoff_seconds(failures))
                continue
            failures = 0
            self.display.apply_experiment(experiment)


def wait_for_experiment(
    client: httpx.Client,
    experiment_id: str,
    *,
    poll_seconds: float,
    output: TextIO,
    timeout_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_delay_seconds: float | None = None,
    stall_seconds: float = EVENTS_STALL_SECONDS,
) -> dict[str, Any]:
    """Follow the experiment with a progress bar until it ends; returns its final state.

    Raises WaitTimeoutError when ``timeout_seconds`` ran out first; the experiment goes on.
    """
    from tqdm import tqdm

    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    path = f"/v1/experiments/{experiment_id}"
    experiment: dict[str, Any] = _request(client, "GET", path, timeout=_request_timeout(deadline)).json()
    total = int((experiment.get("progress") or {}).get("total_epochs") or 0)
    with tqdm(total=total, unit="epoch", file=output, dynamic_ncols=True, leave=True) as bar:
        display = ProgressDisplay(bar, experiment)
        follower = ExperimentFollower(
            client=client,
            experiment_id=experiment_id,
            display=display,
            poll_seconds=poll_seconds,
            deadline=deadline,
            sleep=sleep,
            reconnect_attempts=reconnect_attempts,
            reconnect_delay_seconds=reconnect_delay_seconds,
            stall_seconds=stall_seconds,
        )
        follower.follow()
        # The end event carries the status only; the error summary comes with the experiment. The wait is
        # over, so this request is not cut by --timeout.
        experiment = _request(client, "GET", path, timeout=REQUEST_TIMEOUT_SECONDS).json()
        display.apply_experiment(experiment)
        return experiment


def _print_metrics_summary(client: httpx.Client, experiment_id: str, output: TextIO) -> None:
    """The final test accuracy per activation from the raw metrics (services without the results endpoint)."""
    rows = _request(client, "GET", f"/v1/experiments/{experiment_id}/metrics", params={"format": "json"}).json()
    if rows:
        print(format_results_table(summarise_final_accuracy(rows)), file=output)
    else:
        print("no epoch finished, so there are no metrics", file=output)


def print_final_results(client: httpx.Client, experiment: dict[str, Any], output: TextIO) -> None:
    """The experiment's final status and its per-activation results table, as `actlab results` prints it."""
    # Imported here because app.cli.results imports this module.
    from app.cli.results import format_summary

    experiment_id = str(experiment["id"])
    print(f"\nexperiment {experiment_id} {experiment['status']}", file=output)
    if experiment.get("error"):
        print(f"error: {experiment['error']}", file=output)
    try:
        rows = _request(client, "GET", f"/v1/experiments/{experiment_id}/results", params={"format": "json"}).json()
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
            response = _request(client, "POST", "/v1/experiments", json=spec, headers=headers)
            experiment = response.json()
            experiment_id = str(experiment["id"])
            verb = "submitted" if response.status_code == 202 else "already submitted (same Idempotency-Key)"
            runs = experiment.get("runs") or []
            print(
                f"experiment {experiment_id} {verb}: {len(runs)} run(s) on queue {experiment.get('queue')}",
                file=output,
            )
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
