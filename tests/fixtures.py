"""What several test folders need, in one place: the migrated SQLite template and its copies, a fresh
PostgreSQL database, and the API served by uvicorn until it answers /healthz.

The fixtures built on these live in tests/conftest.py (the template) and in each folder's conftest.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

REPOSITORY = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("ACTLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# How long a starting API may take to answer /healthz before the test fails with its log.
SERVER_START_SECONDS = 60.0


def migrate_sqlite_template(path: Path) -> Path:
    """A SQLite file at ``path`` migrated to head by Alembic, as in production."""
    from app.migrate import upgrade_database

    upgrade_database(f"sqlite:///{path}")
    return path


def sqlite_copy(template: Path, path: Path) -> str:
    """Copy the migrated template to ``path`` (migrating once keeps the suite fast); returns its database URL."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database named ``prefix_<random>``; yields its URL, drops it at the end."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def uvicorn_command(port: int, *options: str) -> list[str]:
    """The command that serves the app (app.main:create_app) on 127.0.0.1:``port``."""
    command = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--host", "127.0.0.1"]
    return [*command, f"--port={port}", *options]


def wait_until_healthy(
    url: str, *, alive: Callable[[], bool], log: Callable[[], str], timeout: float = SERVER_START_SECONDS
) -> None:
    """Return once GET url/healthz answers 200; fail with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not alive() or time.monotonic() > deadline:
            raise AssertionError(f"uvicorn did not start:\n{log()}")
        time.sleep(0.2)


@contextmanager
def uvicorn_server(*, environment: Mapping[str, str], log_path: Path, options: tuple[str, ...] = ()) -> Iterator[str]:
    """Serve the app in a uvicorn process on a free port; yields its URL once it is healthy, stops it at the end."""
    port = free_port()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            uvicorn_command(port, *options),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(environment),
            cwd=REPOSITORY,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, alive=lambda: server.poll() is None, log=log_path.read_text)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
