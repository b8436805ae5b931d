"""Following an experiment to its end: its server-sent events first, status polling as the fallback.

``ExperimentFollower`` reads GET /v1/experiments/ID/events, reconnects with backoff (sending
``Last-Event-ID``) when the stream breaks, polls GET /v1/experiments/ID only when the events
endpoint is missing or stays unreachable, and keeps an ``ExperimentProgress`` up to date, which
calls back on every update (the ``actlab`` CLI draws its progress bar from it). A deadline bounds
the wait: ``WaitTimeoutError`` when it runs out; the experiment goes on.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from actlab.http import REQUEST_TIMEOUT_SECONDS, ClientError, ServiceClient, ServiceUnreachableError, detail_lines

FINISHED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "partial"})
FINISHED_RUN_STATUSES = frozenset({"succeeded", "failed", "diverged", "cancelled", "timed_out"})

# The server sends a heartbeat comment every 15 s, so a stream silent for this long is dead.
EVENTS_STALL_SECONDS = 60.0
RECONNECT_ATTEMPTS = 5
RECONNECT_FIRST_DELAY_SECONDS = 1.0
RECONNECT_MAX_DELAY_SECONDS = 30.0


class WaitTimeoutError(Exception):
    """The deadline (--timeout) ran out before the experiment finished."""


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


class ExperimentProgress:
    """What the follower knows about the experiment: status, finished epochs and runs, the latest epoch."""

    def __init__(
        self, experiment: dict[str, Any], *, on_update: Callable[[ExperimentProgress], None] | None = None
    ) -> None:
        self.on_update = on_update
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
        if self.on_update is not None:
            self.on_update(self)

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


def draw_progress(bar: Any) -> Callable[[ExperimentProgress], None]:
    """A callback that redraws ``bar`` (tqdm) from the progress: finished epochs, status, runs, the latest epoch."""

    def draw(progress: ExperimentProgress) -> None:
        bar.total = progress.total_epochs
        bar.n = (
            min(progress.finished_epochs, progress.total_epochs) if progress.total_epochs else progress.finished_epochs
        )
        postfix = f"{progress.status}, runs {progress.runs_finished}/{progress.runs_total}"
        if progress.latest:
            postfix += f", {progress.latest}"
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    return draw


def deadline_after(seconds: float | None) -> float | None:
    """The deadline ``seconds`` from now on the time.monotonic() clock; None: no limit."""
    return None if seconds is None else time.monotonic() + seconds


def remaining_seconds(deadline: float | None) -> float | None:
    """Seconds left before the deadline (None: no limit); WaitTimeoutError once none are left."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise WaitTimeoutError
    return remaining


def request_timeout(deadline: float | None) -> float:
    """The timeout of one request: the usual one, cut to what the deadline leaves."""
    remaining = remaining_seconds(deadline)
    return REQUEST_TIMEOUT_SECONDS if remaining is None else min(REQUEST_TIMEOUT_SECONDS, remaining)


def _read_event_lines(
    *,
    client: ServiceClient,
    path: str,
    headers: dict[str, str],
    stall_seconds: float,
    sink: queue.Queue[tuple[str, Any]],
    stop: threading.Event,
) -> None:
    """Put the response, then each line of one events request on ``sink``, then how it ended (a thread's job).

    Reading in a thread keeps the waiting side free to honour the deadline and Ctrl-C at once,
    whatever the socket does.
    """
    try:
        timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=stall_seconds)
        with client.stream("GET", path, headers=headers, timeout=timeout) as response:
            streaming = _is_event_stream(response)
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


def _is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")


class ExperimentFollower:
    """Follows one experiment to its end: the event stream first, status polling as the fallback."""

    def __init__(
        self,
        *,
        client: ServiceClient,
        experiment_id: str,
        progress: ExperimentProgress,
        poll_seconds: float,
        deadline: float | None,
        sleep: Callable[[float], None] = time.sleep,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
        reconnect_delay_seconds: float | None = None,
        stall_seconds: float = EVENTS_STALL_SECONDS,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.progress = progress
        self.poll_seconds = poll_seconds
        # On the time.monotonic() clock (see deadline_after); None: wait as long as it takes.
        self.deadline = deadline
        self.sleep = sleep
        self.reconnect_attempts = reconnect_attempts
        # None: the server's `retry:` advice, else one second.
        self.reconnect_delay_seconds = reconnect_delay_seconds
        self.stall_seconds = stall_seconds

    def follow(self) -> None:
        """Return once the experiment finished; WaitTimeoutError when the deadline ran out first."""
        if self.progress.finished:
            return
        if not self._follow_events():
            self._poll()

    def remaining_seconds(self) -> float | None:
        """Seconds left before the deadline (None: no limit); WaitTimeoutError once none are left."""
        return remaining_seconds(self.deadline)

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
            changes = self.progress.changes
            outcome = self._read_one_stream(parser)
            if outcome == "ended":
                return True
            if outcome == "unsupported":
                return False
            # Broken: count the failures in a row that brought nothing new, so a flapping stream is bounded.
            failures = 1 if self.progress.changes > changes else failures + 1
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
                    if event is not None and self.progress.apply_event(event):
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
        if _is_event_stream(response):
            return None
        # A service (or proxy) without the events endpoint: the status resource still works.
        if response.status_code in (200, 404, 405, 406, 501):
            return "unsupported"
        if response.status_code >= 500:
            return "broken"
        raise ClientError(
            f"HTTP {response.status_code} from the events stream: " + "; ".join(detail_lines(response)),
            http_status=response.status_code,
        )

    def _poll(self) -> None:
        """Check the status every ``poll_seconds`` until the experiment finished."""
        path = f"/v1/experiments/{self.experiment_id}"
        failures = 0
        while not self.progress.finished:
            self._pause(self.poll_seconds)
            try:
                experiment = self.client.get_json(path, timeout=request_timeout(self.deadline))
            except ServiceUnreachableError:
                failures += 1
                if failures > self.reconnect_attempts:
                    raise
                self._pause(self._backoff_seconds(failures))
                continue
            failures = 0
            self.progress.apply_experiment(experiment)


def follow_with_bar(
    client: ServiceClient,
    experiment_id: str,
    *,
    make_bar: Callable[[int], Any] | None,
    poll_seconds: float,
    timeout_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_delay_seconds: float | None = None,
    stall_seconds: float = EVENTS_STALL_SECONDS,
) -> dict[str, Any]:
    """Follow the experiment until it ends, drawing ``make_bar(total_epochs)`` (a tqdm) if given; its final state.

    Raises WaitTimeoutError when ``timeout_seconds`` ran out first; the experiment goes on.
    """
    deadline = deadline_after(timeout_seconds)
    path = f"/v1/experiments/{experiment_id}"
    experiment: dict[str, Any] = client.get_json(path, timeout=request_timeout(deadline))
    total = int((experiment.get("progress") or {}).get("total_epochs") or 0)
    bar = make_bar(total) if make_bar is not None else None
    try:
        progress = ExperimentProgress(experiment, on_update=draw_progress(bar) if bar is not None else None)
        ExperimentFollower(
            client=client,
            experiment_id=experiment_id,
            progress=progress,
            poll_seconds=poll_seconds,
            deadline=deadline,
            sleep=sleep,
            reconnect_attempts=reconnect_attempts,
            reconnect_delay_seconds=reconnect_delay_seconds,
            stall_seconds=stall_seconds,
        ).follow()
        # The end event carries the status only; the error summary comes with the experiment. The wait is
        # over, so this request is not cut by the timeout.
        experiment = client.get_json(path, timeout=REQUEST_TIMEOUT_SECONDS)
        progress.apply_experiment(experiment)
        return experiment
    finally:
        if bar is not None:
            bar.close()
