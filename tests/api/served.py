"""The API served for real by uvicorn (tests.fixtures.uvicorn_server), for tests that need real HTTP:
a browser, many concurrent clients. The server gets a clean environment, no ACTLAB_* of the caller,
plus the settings the test passes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.auth.service import create_api_key
from app.db import make_engine, session_factory
from tests.fixtures import uvicorn_server


def create_key(database_url: str, *, name: str, admin: bool = False) -> str:
    """A new API key in that database; the secret."""
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as session:
            return create_api_key(session=session, name=name, is_admin=admin).key
    finally:
        engine.dispose()


@contextmanager
def serve_api(*, database_url: str, workdir: Path, settings: dict[str, str] | None = None) -> Iterator[str]:
    """Serve the app on ``database_url`` (already migrated) with these settings; yields its URL until the block ends.

    The server's output, access log included, goes to ``workdir/uvicorn.log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ACTLAB_") and key not in ("DATABASE_URL", "BROKER_URL")
    }
    environment |= {
        "DATABASE_URL": database_url,
        "BROKER_URL": "filesystem://",
        "ACTLAB_BROKER_FOLDER": str(workdir / "broker"),
        "ACTLAB_CREDENTIALS_FILE": str(workdir / "credentials.json"),
        **(settings or {}),
    }
    with uvicorn_server(environment=environment, log_path=workdir / "uvicorn.log", options=("--workers", "1")) as url:
        yield url
