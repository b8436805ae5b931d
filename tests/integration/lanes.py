"""Private lanes of the integration stack for the fault tests.

A lane is a fresh PostgreSQL database, a broker of its own (a unique key prefix on the shared
Redis, or a private redis-server) and workers started with the lane's settings. Maintenance
passes (reaper, reconciler) act on a whole database and send tasks to their own broker, so a
lane with its own database keeps them from touching the runs of other tests. Tests submit
through the real service function (``submit_experiment``) and read state straight from SQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app.config import Settings, SpecLimits
from app.db import make_engine, session_scope
from app.migrate import upgrade_database
from app.models import EpochMetric, Experiment, Run
from tests.integration.conftest import POSTGRES_ADMIN_URL, ManagedProcess, Stack, free_port, wait_until
from worker.celery_app import TRAIN_RUNS_TASK, configure

FINISHED_RUNS = frozenset({"succeeded", "failed", "diverged", "cancelled", "timed_out"})

# Settings of every lane worker: fast heartbeats and maintenance passes, one retry, JSON logs.
LANE_SETTINGS = {
    "ACTLAB_RUN_HEARTBEAT_SECONDS": "0.5",
    "ACTLAB_RUN_STALE_SECONDS": "8",
    "ACTLAB_MAINTENANCE_INTERVAL_SECONDS": "1",
    "ACTLAB_QUEUED_GRACE_SECONDS": "2",
    "ACTLAB_TASK_MAX_RETRIES": "1",
    "ACTLAB_TASK_RETRY_BACKOFF": "1",
    "ACTLAB_WORKER_HEARTBEAT_SECONDS": "5",
    "ACTLAB_LOG_FORMAT": "json",
    # One torch thread in the lanes' single pool process (its default there is one per core): on a loaded shared
    # machine two threads make every small kernel wait for both cores, and an epoch of slow_spec took over 18 s.
    "ACTLAB_TORCH_THREADS": "1",
    # The lanes start a worker per test and more: each warms up (torch, the optimisers) before its pool forks, on
    # spirals, the dataset their runs train on, rather than generating the default mnist1d every time.
    "ACTLAB_WORKER_WARM_UP_DATASET": "spirals",
}


def slow_spec(*, name: str, epochs: int, seeds: list[int] | None = None) -> dict[str, Any]:
    """A spirals MLP whose epochs take a fraction of a second each (many small batches)."""
    return {
        "name": name,
        "dataset": {"name": "spirals", "params": {"samples": 8000}},
        "model": {"kind": "mlp", "hidden": [64, 64]},
        "activations": ["tanh"],
        "seeds": seeds or [0],
        "training": {"epochs": epochs, "batch_size": 16, "lr": 0.01},
        "device": "cpu",
    }


def tiny_spec(name: str) -> dict[str, Any]:
    """A two-epoch run that trains in about a second."""
    return {
        "name": name,
        "dataset": {"name": "spirals", "params": {"samples": 300}},
        "model": {"kind": "mlp", "hidden": [8]},
        "activations": ["relu"],
        "seeds": [0],
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        "device": "cpu",
    }


METRIC_FIELDS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "val_loss", "val_accuracy")


def uninterrupted_metrics(spec: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(epoch, metrics...) of the spec's first arm trained in this process without interruption, on one torch
    thread as the test workers (ACTLAB_TORCH_THREADS=1): what a resumed run must reproduce exactly on CPU."""
    import torch

    from app.spec import ExperimentSpec
    from worker.training.trainer import train_arm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reports: list[Any] = []
        train_arm(
            ExperimentSpec.model_validate(spec),
            activation_index=0,
            seed=spec["seeds"][0],
            device="cpu",
            on_epoch=reports.append,
        )
    finally:
        torch.set_num_threads(threads)
    return [(report.epoch, *(getattr(report, name) for name in METRIC_FIELDS)) for report in reports]


def stored_metrics(rows: list[Any]) -> list[tuple[Any, ...]]:
    """(epoch, metrics...) of stored epoch rows (ORM rows or API dicts), in the order given."""

    def value(row: Any, name: str) -> Any:
        return row[name] if isinstance(row, dict) else getattr(row, name)

    return [(value(row, "epoch"), *(value(row, name) for name in METRIC_FIELDS)) for row in rows]


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"actlab_fault_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_url.rpartition('/')[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _LaneDispatcher:
    """The API's dispatcher for a lane: everything to the cpu queue of the lane's broker."""

    def __init__(self, producer: Celery) -> None:
        self._producer = producer

    def choose_queue(self, *, session: Any, device: str) -> str:
        return "cpu"

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        for run_id in run_ids:
            self._producer.send_task(TRAIN_RUNS_TASK, kwargs={"run_ids": [str(run_id)]}, queue=queue)


class ApiKilledBeforeEnqueue(BaseException):
    """The API process dying right after its commit, before it enqueued the runs."""


class _DyingDispatcher:
    """The API's dispatcher in a process that dies before it sends anything."""

    def choose_queue(self, *, session: Any, device: str) -> str:
        return "cpu"

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        raise ApiKilledBeforeEnqueue


@dataclass
class Lane:
    """A database, a broker and the settings its workers run with."""

    stack: Stack
    name: str
    database_url: str
    broker_url: str
    key_prefix: str
    settings: dict[str, str]
    engine: Engine
    producer: Celery
    workers: list[ManagedProcess] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """Where this lane keeps checkpoints and logs."""
        path = self.stack.workdir / f"lane-{self.name}"
        path.mkdir(exist_ok=True)
        return path

    def environment(self, **overrides: str) -> dict[str, str]:
        """The environment of a lane process."""
        return {
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.broker_url,
            "ACTLAB_BROKER_KEY_PREFIX": self.key_prefix,
            "ACTLAB_CHECKPOINT_DIR": str(self.folder / "checkpoints"),
            # A checkpoint after every epoch, so that a run killed mid-way resumes from a known epoch.
            "ACTLAB_CHECKPOINT_INTERVAL_SECONDS": "0",
            **self.settings,
            **overrides,
        }

    def start_worker(self, name: str, **overrides: str) -> ManagedProcess:
        """Start `actlab worker --queues cpu` with the lane's settings and wait until it is ready."""
        worker = self.stack.spawn(
            f"{self.name}-{name}",
            [sys.executable, "-m", "app.cli", "worker", "--queues=cpu", "--concurrency=1", f"--hostname={name}@%h"],
            **self.environment(**overrides),
        )
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), timeout=90, what=f"worker {name} ready")
        assert worker.alive(), worker.log()
        self.workers.append(worker)
        return worker

    def worker(self, name: str) -> ManagedProcess:
        """The lane's live worker of this name, started anew if there is none (or it was stopped)."""
        for worker in reversed(self.workers):
            if worker.name == f"{self.name}-{name}" and worker.alive():
                return worker
        return self.start_worker(name)

    def stop_worker(self, name: str) -> None:
        """Stop the lane's worker of this name, if it runs."""
        for worker in self.workers:
            if worker.name == f"{self.name}-{name}" and worker.alive():
                worker.stop(timeout=30)

    def submit(self, spec: dict[str, Any]) -> tuple[uuid.UUID, list[uuid.UUID]]:
        """Store and enqueue an experiment as the API does; returns its id and its run ids in grid order."""
        from app.experiments.service import submit_experiment

        with session_scope(self.engine) as session:
            submission = submit_experiment(
                session=session, dispatcher=_LaneDispatcher(self.producer), payload=spec, limits=SpecLimits()
            )
            return submission.experiment.id, [run.id for run in submission.runs]

    def submit_and_die_before_enqueue(self, spec: dict[str, Any]) -> list[uuid.UUID]:
        """Submit as an API that dies between its commit and the enqueue: the runs stay queued, never sent."""
        from app.experiments.service import submit_experiment

        before = self._stored_run_ids()
        with contextlib.suppress(ApiKilledBeforeEnqueue), session_scope(self.engine) as session:
            submit_experiment(session=session, dispatcher=_DyingDispatcher(), payload=spec, limits=SpecLimits())
        return sorted(self._stored_run_ids() - before)

    def _stored_run_ids(self) -> set[uuid.UUID]:
        with session_scope(self.engine) as session:
            return set(session.execute(select(Run.id)).scalars())

    def enqueue(self, run_id: uuid.UUID) -> None:
        """Send one more task for a run (a duplicate delivery)."""
        _LaneDispatcher(self.producer).enqueue_runs(run_ids=[run_id], queue="cpu")

    def run(self, run_id: uuid.UUID) -> Run:
        """The run's row as it is now."""
        with session_scope(self.engine) as session:
            return session.execute(select(Run).where(Run.id == run_id)).scalar_one()

    def experiment(self, experiment_id: uuid.UUID) -> Experiment:
        """The experiment's row as it is now."""
        with session_scope(self.engine) as session:
            return session.execute(select(Experiment).where(Experiment.id == experiment_id)).scalar_one()

    def epochs(self, run_id: uuid.UUID) -> list[EpochMetric]:
        """The run's epoch rows in epoch order."""
        with session_scope(self.engine) as session:
            statement = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
            return list(session.execute(statement).scalars())

    def wait_for_run(self, run_id: uuid.UUID, *, timeout: float, statuses: frozenset[str] = FINISHED_RUNS) -> Run:
        """Poll until the run's status is one of ``statuses``."""
        return wait_until(
            lambda: (run := self.run(run_id)).status in statuses and run,
            timeout=timeout,
            interval=0.1,
            what=f"run {run_id} to reach {sorted(statuses)}",
        )

    def wait_until_training(self, run_id: uuid.UUID, *, epochs: int, attempt: int = 1, timeout: float = 90) -> Run:
        """Poll until ``attempt`` of the run is running and has finished at least ``epochs`` epochs."""

        def training() -> Run | None:
            run = self.run(run_id)
            assert run.status in ("queued", "running"), (run.status, run.error)
            ready = run.status == "running" and run.attempt == attempt and run.epochs_completed >= epochs
            return run if ready else None

        return wait_until(training, timeout=timeout, interval=0.05, what=f"attempt {attempt} past epoch {epochs}")

    def queue_length(self, redis_client: Any, queue: str = "cpu") -> int:
        """Messages waiting in one of the lane's queues."""
        return int(redis_client.llen(f"{self.key_prefix}{queue}"))


@contextlib.contextmanager
def open_lane(stack: Stack, name: str, *, broker_url: str, **settings: str) -> Iterator[Lane]:
    """A lane with a fresh database; its workers are stopped and its database dropped at the end."""
    key_prefix = f"actlab-fault-{name}-{uuid.uuid4().hex[:8]}:"
    lane_settings = {**LANE_SETTINGS, **settings}
    with fresh_database() as database_url:
        engine = make_engine(database_url)
        producer = Celery(f"lane-{name}")
        configure(producer, Settings(broker_url=broker_url, broker_key_prefix=key_prefix, database_url=database_url))
        lane = Lane(
            stack=stack,
            name=name,
            database_url=database_url,
            broker_url=broker_url,
            key_prefix=key_prefix,
            settings=lane_settings,
            engine=engine,
            producer=producer,
        )
        try:
            yield lane
        finally:
            for worker in reversed(lane.workers):
                worker.stop(timeout=20)
            producer.close()
            engine.dispose()
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(broker_url, socket_connect_timeout=2)
                keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()


def pool_processes(worker: ManagedProcess) -> list[int]:
    """The pids of a worker's pool processes (the children of its main process)."""
    path = Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
    with contextlib.suppress(OSError):
        return [int(pid) for pid in path.read_text().split()]
    return []


def the_pool_process(worker: ManagedProcess) -> int:
    """The single pool process of a --concurrency=1 worker, waiting for it if it is being replaced."""
    pids = wait_until(
        lambda: pool_processes(worker) or None, timeout=30, interval=0.05, what="the worker's pool process"
    )
    assert len(pids) == 1, pids
    return pids[0]


def worker_log_lines(worker: ManagedProcess) -> list[dict[str, Any]]:
    """The worker's JSON log lines, parsed (other output skipped)."""
    import json

    lines = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


def signal_process(pid: int, signal_number: int) -> None:
    """Send a signal to one process, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal_number)


@dataclass
class PrivateRedis:
    """A redis-server of its own on a free port, without persistence, that a test may kill and restart."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        """Start it on its port and wait until it answers."""
        import redis

        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

        def answers() -> bool:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
                try:
                    return bool(client.ping())
                finally:
                    client.close()
            except redis.exceptions.ConnectionError:
                return False

        wait_until(answers, timeout=30, what=f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL it: every message it held is gone."""
        if self.process is not None:
            signal_process(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None


class CuttableProxy:
    """A TCP proxy to PostgreSQL that a test can cut: while cut, open connections are dropped and new ones closed.

    To a client that is a database that went away (server closed the connection) and came back.
    """

    def __init__(self, *, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def url_for(self, database_url: str) -> str:
        """The same database URL, through the proxy."""
        return database_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{self.port}/")

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until ``restore``."""
        self._cut.set()
        with self._lock:
            for sock in list(self._sockets):
                self._close(sock)

    def restore(self) -> None:
        """Let connections through again."""
        self._cut.clear()

    def close(self) -> None:
        """Stop listening and drop everything."""
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)

    def _close(self, sock: socket.socket) -> None:
        self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                self.refused += 1
                self._close(client)
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                self._close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._close(source)
                self._close(target)


def wait_for_exit(process: ManagedProcess, *, timeout: float) -> int | None:
    """Wait (bounded) for a process to exit on its own; returns its exit status."""
    assert process.process is not None
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return process.process.poll()
