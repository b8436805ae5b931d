"""The real stack for integration tests: a fresh PostgreSQL database, Redis under a unique key
prefix, the API served by uvicorn and Celery workers, each in its own process group.

Every wait is bounded, and every process is killed (its whole group) when its fixture ends.
The broker timings are shortened for the tests but keep the production invariant
visibility timeout > hard time limit > soft time limit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.fixtures import POSTGRES_ADMIN_URL as POSTGRES_ADMIN_URL  # lanes.py imports it from here
from tests.fixtures import free_port, fresh_postgres_database, uvicorn_command, wait_until_healthy

REDIS_URL = os.environ.get("ACTLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Seconds: soft limit < hard limit (soft + grace) < visibility timeout, as in production, but short,
# so that a killed worker's task comes back within two minutes. The soft limit is no test of speed:
# the lanes' runs take a few seconds idle and must not time out on a loaded 2-core machine (the
# time-limit tests use a lane of their own, test_faults.limits_lane).
SOFT_TIME_LIMIT = 90
TIME_LIMIT_GRACE = 3
VISIBILITY_TIMEOUT = 100
FINISHED = frozenset({"succeeded", "failed", "cancelled", "partial"})

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    command: list[str]
    log_path: Path
    environment: dict[str, str]
    cwd: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process (its own session, so the whole group can be signalled)."""
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signal_number: int) -> None:
        """Send a signal to the process and every process of its group (pool children included)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal_number)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would, and reap the process."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, *, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit status."""
        if self.process is None:
            return None
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait(timeout=30)
        # Leftover pool children of the group, if any.
        self.signal_group(signal.SIGKILL)
        return self.process.returncode

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    """The environment of the service processes and helpers to start them."""

    environment: dict[str, str]
    workdir: Path
    database_url: str
    key_prefix: str
    api_key: str
    processes: list[ManagedProcess] = field(default_factory=list)
    workers: dict[str, ManagedProcess] = field(default_factory=dict)

    def spawn(self, name: str, command: list[str], *, cwd: Path | None = None, **environment: str) -> ManagedProcess:
        """Start a process with the stack's environment (plus overrides); it is stopped at the end of the session."""
        managed = ManagedProcess(
            name=name,
            command=command,
            log_path=self.workdir / f"{name}-{len(self.processes)}.log",
            environment={**self.environment, **environment},
            cwd=cwd or self.workdir,
        ).start()
        self.processes.append(managed)
        return managed

    def start_worker(self, queues: str = "cpu", *, name: str | None = None) -> ManagedProcess:
        """Start `actlab worker --queues QUEUES` and wait until it has connected to the broker."""
        worker = self.spawn(
            name or f"worker-{queues.replace(',', '-')}",
            [sys.executable, "-m", "app.cli", "worker", f"--queues={queues}", "--concurrency=1"],
        )
        wait_until(
            lambda: "ready." in worker.log() or not worker.alive(), timeout=90, what=f"the {queues} worker to be ready"
        )
        assert worker.alive(), worker.log()
        return worker

    def ensure_worker(self, queues: str = "cpu") -> ManagedProcess:
        """The running worker of these queues, started anew if there is none (or it was killed)."""
        current = self.workers.get(queues)
        if current is None or not current.alive():
            current = self.start_worker(queues)
            self.workers[queues] = current
        return current


def _create_admin_key(database_url: str) -> str:
    """An admin API key in the test database, as `actlab keys create --admin` would make."""
    from app.auth.service import create_api_key
    from app.db import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return create_api_key(session=session, name="integration tests", is_admin=True).key
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_postgres_database("actlab_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Any]:
    """A client of the test Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    client.close()


def stack_environment(*, database_url: str, key_prefix: str, workdir: Path) -> dict[str, str]:
    """The environment of the stack's API and workers (also bench/soak.py's): none of the caller's ACTLAB_*
    settings, PostgreSQL, Redis keys under ``key_prefix``, short broker timings, a checkpoint every epoch."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ACTLAB_") and key not in ("DATABASE_URL", "BROKER_URL")
    }
    return {
        **base,
        "DATABASE_URL": database_url,
        "BROKER_URL": REDIS_URL,
        "ACTLAB_BROKER_KEY_PREFIX": key_prefix,
        "ACTLAB_TASK_SOFT_TIME_LIMIT": str(SOFT_TIME_LIMIT),
        "ACTLAB_TASK_TIME_LIMIT_GRACE": str(TIME_LIMIT_GRACE),
        "ACTLAB_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "ACTLAB_BROKER_RESTORE_INTERVAL": "1",
        "ACTLAB_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0",
        "ACTLAB_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        # A checkpoint after every epoch, so that a run killed mid-way resumes from a known epoch.
        "ACTLAB_CHECKPOINT_INTERVAL_SECONDS": "0",
        "ACTLAB_DATA_DIR": str(workdir / "data"),
        "ACTLAB_TORCH_THREADS": "1",
        # The pool processes warm up on the dataset the tests train on (small_spec), not on mnist1d.
        "ACTLAB_WORKER_WARM_UP_DATASET": "digits",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_client: Any) -> Iterator[Stack]:
    """The service environment: PostgreSQL, Redis keys under a unique prefix, short broker timings."""
    from app.migrate import upgrade_database

    workdir = tmp_path_factory.mktemp("stack")
    key_prefix = f"actlab-test-{uuid.uuid4().hex[:12]}:"
    environment = stack_environment(database_url=postgres_url, key_prefix=key_prefix, workdir=workdir)
    upgrade_database(postgres_url)
    running = Stack(
        environment=environment,
        workdir=workdir,
        database_url=postgres_url,
        key_prefix=key_prefix,
        api_key=_create_admin_key(postgres_url),
    )
    try:
        yield running
    finally:
        for managed in reversed(running.processes):
            managed.stop(timeout=20)
        keys = list(redis_client.scan_iter(match=f"{key_prefix}*", count=1000))
        if keys:
            redis_client.delete(*keys)


@pytest.fixture(scope="session")
def api_url(stack: Stack) -> str:
    """The API served for real by uvicorn on a free port."""
    port = free_port()
    server = stack.spawn("api", uvicorn_command(port, "--log-level=warning"))
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, alive=server.alive, log=server.log)
    return url


@pytest.fixture
def api(api_url: str, stack: Stack) -> Iterator[httpx.Client]:
    """An HTTP client of the API, with an admin key."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=api_url, timeout=30, headers=headers) as client:
        yield client


@pytest.fixture
def cpu_worker(stack: Stack) -> ManagedProcess:
    """A live worker on the cpu queue, shared by the tests (started again after a test killed it)."""
    return stack.ensure_worker("cpu")


def wait_for_experiment(
    api: httpx.Client, experiment_id: str, *, timeout: float, until: frozenset[str] = FINISHED
) -> dict[str, Any]:
    """Poll the experiment until its status is in ``until``; returns its last state."""

    def reached() -> dict[str, Any] | None:
        experiment = api.get(f"/v1/experiments/{experiment_id}").json()
        return experiment if experiment["status"] in until else None

    return wait_until(reached, timeout=timeout, what=f"experiment {experiment_id} to reach {sorted(until)}")


def train_to_success(api: httpx.Client, spec: dict[str, Any], *, timeout: float = 180) -> dict[str, Any]:
    """Submit a spec, wait for the experiment to finish and check it succeeded; returns its last state."""
    response = api.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    experiment = wait_for_experiment(api, response.json()["id"], timeout=timeout)
    assert experiment["status"] == "succeeded", experiment
    return experiment


def spirals_spec(
    *,
    name: str,
    epochs: int,
    samples: int = 300,
    activations: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str = "cpu",
    hidden: list[int] | None = None,
) -> dict[str, Any]:
    """A small spirals MLP experiment."""
    return {
        "name": name,
        "dataset": {"name": "spirals", "params": {"samples": samples}},
        "model": {"kind": "mlp", "hidden": hidden or [16]},
        "activations": activations or ["relu"],
        "seeds": seeds or [0],
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.01},
        "device": device,
    }
