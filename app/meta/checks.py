"""Readiness checks: can the service reach its database and its broker, and is the worker of `actlab serve` up?"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.config import Settings

# Readiness must answer quickly even when a dependency hangs.
CHECK_TIMEOUT_SECONDS = 2.0


class WorkerSupervision(Protocol):
    """The worker supervisor of `actlab serve` (app/cli/supervisor.py), set as ``app.state.worker_supervisor``."""

    def check(self) -> tuple[bool, str]:
        """Whether its worker is up and consuming, and why not."""
        ...


def _describe(error: Exception) -> str:
    # First line only: driver messages go on with SQL and links that do not help an operator here.
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def check_database(engine: Engine) -> tuple[bool, str]:
    """SELECT 1 on the database."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        return False, f"database unreachable: {_describe(error)}"
    return True, f"{engine.dialect.name} reachable"


def _check_folder(folder: Path) -> tuple[bool, str]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-", delete=True) as probe:
            probe.write(b"ok")
    except OSError as error:
        return False, f"broker folder {folder} is not writable: {error}"
    return True, f"broker folder {folder} is writable"


def _check_redis(url: str) -> tuple[bool, str]:
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except Exception as error:
        return False, f"redis broker unreachable: {_describe(error)}"
    finally:
        client.close()
    return True, "redis broker answers PING"


def _check_with_kombu(url: str) -> tuple[bool, str]:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as connection:
            connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:
        return False, f"broker unreachable: {_describe(error)}"
    return True, "broker reachable"


def check_broker(settings: Settings) -> tuple[bool, str]:
    """Ping Redis, check that the embedded broker's folder is writable, or connect with kombu otherwise."""
    url = settings.broker_url
    scheme = url.split("://", 1)[0].lower()
    if scheme == "filesystem":
        return _check_folder(Path(settings.broker_folder))
    if scheme in ("redis", "rediss"):
        return _check_redis(url)
    if scheme == "memory":
        return True, "in-memory broker"
    return _check_with_kombu(url)
