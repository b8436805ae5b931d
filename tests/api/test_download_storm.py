"""Many concurrent metric downloads against a real uvicorn, on SQLite and on PostgreSQL (issue 14 item 1).

The limits are lowered through settings (a pool of 6 + 2 connections, 3 downloads at once) so that a
few dozen clients are a storm. Only outcomes are asserted, never timing: every response is either
complete and equal to the table downloaded at rest, or a 503 with Retry-After; never a truncated 200,
never a 500; a status probe during the storm succeeds; a download holds one database connection
(PostgreSQL: counted in pg_stat_activity) and gives it back, with its place, when the client goes away.
Latency under load is measured by bench/download_storm.py, not here.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.orm import Session

from app.migrate import upgrade_database
from app.models import EpochMetric, LayerMetric, Run
from tests.api.served import create_key, serve_api
from tests.fixtures import fresh_postgres_database, sqlite_copy
from tests.results.conftest import insert_experiment

DOWNLOADS_AT_ONCE = 3
EVENT_STREAMS_AT_ONCE = 4
STORM_CLIENTS = 40
LIMITS = {
    "ACTLAB_AUTH_REQUIRED": "true",
    "ACTLAB_DATABASE_POOL_SIZE": "6",
    "ACTLAB_DATABASE_MAX_OVERFLOW": "2",
    "ACTLAB_MAX_STREAMING_DOWNLOADS": str(DOWNLOADS_AT_ONCE),
    "ACTLAB_EVENT_POLL_CONCURRENCY": "1",
    "ACTLAB_MAX_EVENT_STREAMS": str(EVENT_STREAMS_AT_ONCE),
    # A quiet stream's comment line after 0.2 s instead of the default 15 s (the heartbeat test below).
    "ACTLAB_EVENT_HEARTBEAT_SECONDS": "0.2",
}
HEARTBEATS = 5
EXTRA_EPOCHS = 40  # per run: each epoch-table download is about 1,000 rows in one or two batches
# The rows a held download reads, about 1 KiB each and 9 MiB in all: more than the socket buffers hold,
# so a client that stops reading leaves the server blocked in the middle of the body.
HELD_EPOCHS = range(10_000, 10_400)
PADDING = "x" * 900
# What the storm downloads: each table in both formats, and a filtered layer table.
STORM_PATHS = [
    ("metrics", {"format": "csv"}),
    ("metrics", {"format": "json"}),
    ("layer-metrics", {"format": "csv", "epoch_max": "4"}),
    ("layer-metrics", {"format": "json", "epoch_max": "4"}),
]
HELD_PATH = ("layer-metrics", {"format": "csv", "epoch_min": str(HELD_EPOCHS.start)})


@dataclass
class Served:
    url: str
    key: str
    experiment_id: uuid.UUID
    running_id: uuid.UUID
    database_url: str

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, **options)

    def path(self, table: str) -> str:
        return f"/v1/experiments/{self.experiment_id}/{table}"


def _seed(database_url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A finished experiment with 24 runs, 44 epochs each, and 9,600 padded layer rows; and a running one."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            running_id = insert_experiment(session, status="running")
            experiment_id = insert_experiment(session)
            run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id)))
            session.execute(
                insert(EpochMetric),
                [
                    {"run_id": run_id, "epoch": epoch, "attempt": 1, "train_loss": 1.0 / epoch, "test_accuracy": 0.5}
                    for run_id in run_ids
                    for epoch in range(5, 5 + EXTRA_EPOCHS)
                ],
            )
            session.execute(
                insert(LayerMetric),
                [
                    {
                        "run_id": run_id,
                        "epoch": epoch,
                        "layer": 0,
                        "layer_name": "hidden.0",
                        "attempt": 1,
                        "grad_norm": 0.25,
                        "activation_parameters": {"padding": PADDING},
                    }
                    for run_id in run_ids
                    for epoch in HELD_EPOCHS
                ],
            )
            session.commit()
            return experiment_id, running_id
    finally:
        engine.dispose()


@contextlib.contextmanager
def _serve(database_url: str, workdir: Path) -> Iterator[Served]:
    experiment_id, running_id = _seed(database_url)
    key = create_key(database_url, name="storm", admin=True)
    with serve_api(database_url=database_url, workdir=workdir, settings=LIMITS) as url:
        yield Served(url=url, key=key, experiment_id=experiment_id, running_id=running_id, database_url=database_url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, migrated_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp(f"storm-{request.param}")
    if request.param == "sqlite":
        with _serve(sqlite_copy(migrated_template, workdir / "storm.db"), workdir / "api") as served:
            yield served
        return
    with fresh_postgres_database("actlab_storm") as url:
        upgrade_database(url)
        with _serve(url, workdir / "api") as served:
            yield served


@dataclass
class Outcome:
    status: int | str
    retry_after: str | None = None
    complete: bool = False


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def count(self, status: int | str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)


def _download(served: Served, table: str, params: dict[str, str], expected: bytes, *, slow: bool) -> Outcome:
    """One download, read to its end (in small pieces when slow); a cut-off body is recorded, not raised."""
    with served.client(timeout=120) as client:
        try:
            with client.stream("GET", served.path(table), params=params) as response:
                body = b"".join(response.iter_bytes(4096 if slow else 65536))
        except httpx.RemoteProtocolError:
            return Outcome(status="truncated")
    if response.status_code != 200:
        return Outcome(status=response.status_code, retry_after=response.headers.get("Retry-After"))
    return Outcome(status=200, complete=body == expected)


def _reference(served: Served) -> dict[int, bytes]:
    """Each storm download, fetched at rest, one at a time."""
    with served.client(timeout=120) as client:
        bodies = {}
        for index, (table, params) in enumerate(STORM_PATHS):
            response = client.get(served.path(table), params=params)
            assert response.status_code == 200, response.text
            bodies[index] = response.content
    return bodies


def _storm(served: Served, expected: dict[int, bytes], *, clients: int) -> tuple[Tally, Tally]:
    """``clients`` downloads at once (every third one a slow reader) and a status probe looping meanwhile."""
    downloads, probes = Tally(), Tally()
    start = threading.Barrier(clients + 1)
    finished = threading.Event()

    def download(number: int) -> None:
        index = number % len(STORM_PATHS)
        table, params = STORM_PATHS[index]
        start.wait()
        downloads.add(_download(served, table, params, expected[index], slow=number % 3 == 0))

    def probe() -> None:
        start.wait()
        with served.client(timeout=120) as client:
            while True:
                response = client.get(f"/v1/experiments/{served.experiment_id}")
                probes.add(Outcome(status=response.status_code, complete=response.json().get("id") is not None))
                if finished.is_set():
                    return

    threads = [threading.Thread(target=download, args=(number,)) for number in range(clients)]
    prober = threading.Thread(target=probe)
    for thread in [*threads, prober]:
        thread.start()
    for thread in threads:
        thread.join()
    finished.set()
    prober.join()
    return downloads, probes


@contextlib.contextmanager
def _held_downloads(served: Served, count: int) -> Iterator[None]:
    """``count`` large downloads that read their first piece and then stop reading until the block ends."""
    table, params = HELD_PATH
    readers = []  # kept referenced: a dropped body iterator would close its response, and the connection
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            client = stack.enter_context(served.client(timeout=120))
            response = stack.enter_context(client.stream("GET", served.path(table), params=params))
            assert response.status_code == 200, response.read()
            readers.append(response.iter_bytes(4096))
            next(readers[-1])
        yield


def _busy_connections(database_url: str) -> Callable[[], int]:
    """On PostgreSQL: how many connections to the database are in a query or a transaction (not idle)."""
    engine = create_engine(database_url)
    name = engine.url.database

    def count() -> int:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid() "
                        "AND state IN ('active', 'idle in transaction')"
                    ),
                    {"name": name},
                ).scalar_one()
            )

    return count


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition on the server's state until it holds (bounded, so a failure is a failure, not a hang)."""
    for _ in range(300):
        if condition():
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"never: {what}")


def test_a_download_storm_gets_complete_bodies_or_503_with_retry_after_and_probes_succeed(served: Served) -> None:
    expected = _reference(served)
    postgres = served.database_url.startswith("postgresql")
    busy = _busy_connections(served.database_url) if postgres else None

    # Every place taken by downloads that stopped reading: the storm is refused at once, the probe still answers.
    with _held_downloads(served, DOWNLOADS_AT_ONCE):
        if busy is not None:
            # One connection per held download, and no more (the request's checks ran on the same one).
            assert busy() == DOWNLOADS_AT_ONCE
        refused, probes = _storm(served, expected, clients=STORM_CLIENTS)
    print(f"held: {len(refused.outcomes)} downloads -> {refused.count(503)} x 503; probes {probes.count(200)} x 200")
    assert refused.count(503) == STORM_CLIENTS
    assert all(outcome.retry_after for outcome in refused.outcomes)
    assert probes.outcomes and all(probe.status == 200 and probe.complete for probe in probes.outcomes)

    # The clients went away: their connections and places come back.
    if busy is not None:
        _wait_for(lambda: busy() == 0, "the held downloads' connections were released")
    table, params = STORM_PATHS[0]
    _wait_for(
        lambda: _download(served, table, params, expected[0], slow=False).status == 200,
        "a download is admitted again",
    )

    # A free-for-all storm: each response complete and correct, or a 503 with Retry-After.
    downloads, probes = _storm(served, expected, clients=STORM_CLIENTS)
    statuses = {status: downloads.count(status) for status in {o.status for o in downloads.outcomes}}
    print(f"storm: {len(downloads.outcomes)} downloads -> {statuses}; probes {probes.count(200)} x 200")
    assert set(statuses) <= {200, 503}, statuses
    assert all(outcome.complete for outcome in downloads.outcomes if outcome.status == 200)
    assert all(outcome.retry_after for outcome in downloads.outcomes if outcome.status == 503)
    assert statuses.get(200, 0) >= 1
    assert probes.outcomes and all(probe.status == 200 for probe in probes.outcomes)

    # Every place was given back: as many downloads as the limit allows are admitted together.
    with _held_downloads(served, DOWNLOADS_AT_ONCE):
        pass


@contextlib.contextmanager
def _held_event_streams(served: Served, count: int) -> Iterator[None]:
    """``count`` event streams of the running experiment, each read up to its first events, open until the end."""
    readers = []
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            client = stack.enter_context(served.client(timeout=120))
            response = stack.enter_context(client.stream("GET", f"/v1/experiments/{served.running_id}/events"))
            assert response.status_code == 200, response.read()
            readers.append(response.iter_lines())
            assert next(line for line in readers[-1] if line.startswith("event:"))
        yield


def _event_stream_outcome(served: Served, experiment_id: uuid.UUID) -> Outcome:
    """One event stream: 503 (with Retry-After), or 200 read until its first event."""
    with served.client(timeout=120) as client:
        try:
            with client.stream("GET", f"/v1/experiments/{experiment_id}/events") as response:
                if response.status_code != 200:
                    response.read()
                    return Outcome(status=response.status_code, retry_after=response.headers.get("Retry-After"))
                lines = list(itertools.takewhile(lambda line: not line.startswith("event: end"), response.iter_lines()))
        except httpx.RemoteProtocolError:
            return Outcome(status="truncated")
    return Outcome(status=200, complete=any(line.startswith("event: status") for line in lines))


# With the default 15 s the five heartbeats would take 75 s: the test fails when the setting is not applied.
@pytest.mark.timeout(45)
def test_a_quiet_event_stream_writes_a_heartbeat_every_configured_interval(served: Served) -> None:
    path = f"/v1/experiments/{served.running_id}/events"
    with served.client(timeout=120) as client, client.stream("GET", path) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        heartbeats = 0
        while heartbeats < HEARTBEATS:
            line = next(lines)
            heartbeats += line == ": heartbeat"
            assert not line.startswith("event: end"), "the running experiment's stream ended"
    assert heartbeats == HEARTBEATS


def test_event_streams_over_their_limit_get_503_hold_no_idle_connection_and_come_back(served: Served) -> None:
    postgres = served.database_url.startswith("postgresql")
    busy = _busy_connections(served.database_url) if postgres else None
    refused = Tally()
    with _held_event_streams(served, EVENT_STREAMS_AT_ONCE):
        if busy is not None:
            # Between polls a stream holds no connection (at most one poll runs at a time here).
            assert busy() <= 1
        clients = [
            threading.Thread(target=lambda: refused.add(_event_stream_outcome(served, served.running_id)))
            for _ in range(STORM_CLIENTS // 2)
        ]
        for thread in clients:
            thread.start()
        with served.client(timeout=120) as client:
            probe = client.get(f"/v1/experiments/{served.experiment_id}")
        for thread in clients:
            thread.join()
    print(f"events: {len(refused.outcomes)} streams over the limit -> {refused.count(503)} x 503")
    assert refused.count(503) == STORM_CLIENTS // 2
    assert all(outcome.retry_after for outcome in refused.outcomes)
    assert probe.status_code == 200

    # The held clients went away: a new stream is admitted and runs to the end of a finished experiment.
    _wait_for(
        lambda: _event_stream_outcome(served, served.experiment_id).status == 200, "an event stream is admitted again"
    )
    finished = _event_stream_outcome(served, served.experiment_id)
    assert finished.status == 200 and finished.complete


def test_a_request_that_gets_no_database_connection_in_time_is_a_503_with_retry_after(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from app.migrate import upgrade_database as migrate

    database_url = f"sqlite:///{tmp_path / 'busy.db'}"
    migrate(database_url)
    settings = Settings(
        DATABASE_URL=database_url,
        BROKER_URL="filesystem://",
        broker_folder=tmp_path / "broker",
        auth_required=False,
        database_pool_size=3,
        database_max_overflow=0,
        database_pool_timeout=0.2,
        max_streaming_downloads=1,
        event_poll_concurrency=1,
    )
    app = create_app(settings)
    with TestClient(app) as client, contextlib.ExitStack() as taken:
        for _ in range(3):
            taken.enter_context(app.state.engine.connect())
        response = client.get("/v1/experiments")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.stream_retry_after_seconds)
    assert "retry" in response.json()["detail"]
