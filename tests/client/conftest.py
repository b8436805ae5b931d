"""Fixtures of the client tests: the app and fake finished experiment of the results tests, the user's
credentials and environment kept out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.results.conftest import app, client, db, finished_experiment, settings

__all__ = ["app", "client", "db", "finished_experiment", "settings"]


@pytest.fixture(autouse=True)
def no_user_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $ACTLAB_URL or $ACTLAB_API_KEY of the user, and an empty credentials file location."""
    monkeypatch.delenv("ACTLAB_URL", raising=False)
    monkeypatch.delenv("ACTLAB_API_KEY", raising=False)
    monkeypatch.setenv("ACTLAB_CREDENTIALS_FILE", str(tmp_path / "credentials.json"))
