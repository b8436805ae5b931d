"""Fixtures every test folder shares (the helpers behind them are in tests/fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import migrate_sqlite_template


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; each test copies it (tests.fixtures.sqlite_copy) instead of migrating."""
    return migrate_sqlite_template(tmp_path_factory.mktemp("template") / "template.db")
