"""Fixtures of the CLI tests: `actlab results` reads the fake finished experiment of the results tests, and
``served`` is the real app under uvicorn on a SQLite file (one per test module that uses it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from app.auth.service import create_api_key
from app.db import make_engine, session_factory
from tests.fixtures import sqlite_copy, uvicorn_server
from tests.results.conftest import app, client, db, finished_experiment, settings

__all__ = ["Served", "app", "client", "db", "finished_experiment", "served", "settings"]


@dataclass
class Served:
    """A uvicorn process serving the app on a SQLite file."""

    url: str
    key: str
    engine: Engine
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("served-client")
    database_url = sqlite_copy(migrated_template, folder / "client.db")
    engine = make_engine(database_url)
    with session_factory(engine)() as session:
        key = create_api_key(session=session, name="client-test").key
    log_path = folder / "uvicorn.log"
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ACTLAB_")}
    environment |= {
        "DATABASE_URL": database_url,
        "BROKER_URL": "filesystem://",
        "ACTLAB_BROKER_FOLDER": str(folder / "broker"),
        "ACTLAB_CHECKPOINT_DIR": str(folder / "checkpoints"),
        "ACTLAB_CREDENTIALS_FILE": str(folder / "credentials.json"),
        "ACTLAB_AUTH_REQUIRED": "true",
    }
    try:
        with uvicorn_server(environment=environment, log_path=log_path) as url:
            yield Served(url=url, key=key, engine=engine, log_path=log_path)
    finally:
        engine.dispose()
