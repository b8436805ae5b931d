"""The pragmas every SQLite connection gets (app/db.py): WAL, the synchronous setting, foreign keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings
from app.db import make_engine

# PRAGMA synchronous answers a number: 1 is NORMAL, 2 is FULL.
SYNCHRONOUS = {"normal": 1, "full": 2}


@pytest.mark.parametrize("setting", [None, "normal", "full"])
def test_sqlite_connections_use_wal_and_the_synchronous_setting(tmp_path: Path, setting: str | None) -> None:
    settings = Settings() if setting is None else Settings(sqlite_synchronous=setting)
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}", settings=settings)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert connection.execute(text("PRAGMA synchronous")).scalar_one() == SYNCHRONOUS[setting or "normal"]
            assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        engine.dispose()


def test_an_unknown_synchronous_value_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="sqlite_synchronous") as refused:
        Settings(sqlite_synchronous="off")  # type: ignore[arg-type]
    assert "'normal'" in str(refused.value) and "'full'" in str(refused.value)
