"""Live progress as server-sent events, produced by polling the database.

Each poll reads the experiment's status, its runs' statuses and each run's latest stored epoch;
a run whose latest epoch moved on gets one ``epoch`` event per new epoch row (read per run in
epoch order, so rows committed out of order across workers are never skipped), then a ``status``
event when its status changed; an ``experiment`` status event follows. The stream sends a comment
line as a heartbeat when nothing happened for a while, and ends with an ``end`` event once the
experiment has finished. Every event's data is one JSON object. Epoch 0 (the network at
initialisation) has its event like any epoch and counts for nothing in ``epochs_finished``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import sqlalchemy.exc
from sqlalchemy.orm import Session, sessionmaker

from app.experiments.service import FINISHED_EXPERIMENT_STATUSES
from app.results import repository
from app.results.encoding import json_ready

_FINISHED = frozenset(str(status) for status in FINISHED_EXPERIMENT_STATUSES)
RECONNECT_MILLISECONDS = 3000
logger = logging.getLogger(__name__)


def format_event(event: str, data: dict[str, Any]) -> str:
    """One server-sent event: its name and a JSON data line."""
    return f"event: {event}\ndata: {json.dumps(json_ready(data), separators=(',', ':'))}\n\n"


class ExperimentEventPoller:
    """Remembers what a stream already sent and turns one database poll into the new events."""

    def __init__(self, *, session_factory: sessionmaker[Session], experiment_id: uuid.UUID) -> None:
        self.session_factory = session_factory
        self.experiment_id = experiment_id
        self.emitted_epochs: dict[uuid.UUID, int] = {}
        self.statuses: dict[str, str] = {}

    def epochs_finished(self) -> int:
        """Trained epochs sent so far over every run (epoch 0 trains nothing)."""
        return sum(max(epoch, 0) for epoch in self.emitted_epochs.values())

    def poll(self) -> tuple[list[str], bool]:
        """The events since the last poll, and whether the stream is over."""
        events: list[str] = []
        with self.session_factory() as session:
            state = repository.experiment_state(session=session, experiment_id=self.experiment_id)
            if state is None:
                return [
                    format_event("end", {"experiment_id": self.experiment_id, "reason": "experiment not found"})
                ], True
            status, total_epochs, runs = state
            latest = repository.latest_epochs(session=session, experiment_id=self.experiment_id)
            for run_id, label, seed, run_status in runs:
                # -1: nothing sent yet, so epoch 0 (the network at initialisation) is sent too.
                if latest.get(run_id, -1) > self.emitted_epochs.get(run_id, -1):
                    for row in repository.epochs_after(
                        session=session, run_id=run_id, after_epoch=self.emitted_epochs.get(run_id, -1)
                    ):
                        self.emitted_epochs[run_id] = int(row["epoch"])
                        row["epochs_finished"] = self.epochs_finished()
                        row["epochs_total"] = total_epochs
                        events.append(format_event("epoch", row))
                key = str(run_id)
                if self.statuses.get(key) != run_status:
                    self.statuses[key] = run_status
                    run_event = {
                        "scope": "run",
                        "run_id": run_id,
                        "activation": label,
                        "seed": seed,
                        "status": run_status,
                    }
                    events.append(format_event("status", run_event))
        if self.statuses.get("experiment") != status:
            self.statuses["experiment"] = status
            experiment_event = {
                "scope": "experiment",
                "experiment_id": self.experiment_id,
                "status": status,
                "epochs_finished": self.epochs_finished(),
                "epochs_total": total_epochs,
            }
            events.append(format_event("status", experiment_event))
        finished = status in _FINISHED
        if finished:
            events.append(format_event("end", {"experiment_id": self.experiment_id, "status": status}))
        return events, finished


def experiment_events(
    *,
    session_factory: sessionmaker[Session],
    experiment_id: uuid.UUID,
    poll_seconds: float = 1.0,
    heartbeat_seconds: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[str]:
    """Server-sent event text for one experiment until it finishes (synchronous; the CLI and tests use it)."""
    poller = ExperimentEventPoller(session_factory=session_factory, experiment_id=experiment_id)
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
    last_sent = clock()
    while True:
        events, finished = poller.poll()
        if events:
            yield "".join(events)
            last_sent = clock()
        if finished:
            return
        if clock() - last_sent >= heartbeat_seconds:
            yield ": heartbeat\n\n"
            last_sent = clock()
        sleep(poll_seconds)


async def experiment_event_stream(
    *,
    session_factory: sessionmaker[Session],
    experiment_id: uuid.UUID,
    poll_seconds: float = 1.0,
    heartbeat_seconds: float = 15.0,
    poll_limiter: anyio.CapacityLimiter | None = None,
) -> AsyncIterator[str]:
    """The same events for the HTTP endpoint: database polls in the thread pool, waits on the event loop.

    ``poll_limiter`` bounds how many streams poll (hold a connection) at the same moment. A poll the
    database does not answer (no free connection, locked, unreachable) is skipped, not fatal: the
    stream goes on and the next poll sends what was missed.
    """
    poller = ExperimentEventPoller(session_factory=session_factory, experiment_id=experiment_id)
    yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
    last_sent = time.monotonic()
    while True:
        sent_epochs, sent_statuses = dict(poller.emitted_epochs), dict(poller.statuses)
        try:
            events, finished = await anyio.to_thread.run_sync(poller.poll, limiter=poll_limiter)
        except (sqlalchemy.exc.TimeoutError, sqlalchemy.exc.OperationalError) as error:
            # Forget what the failed poll had begun to emit, so that the next one sends it.
            poller.emitted_epochs, poller.statuses = sent_epochs, sent_statuses
            logger.warning("event stream of %s skipped a poll: %s", experiment_id, error)
            events, finished = [], False
        if events:
            yield "".join(events)
            last_sent = time.monotonic()
        if finished:
            return
        if time.monotonic() - last_sent >= heartbeat_seconds:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_seconds)
