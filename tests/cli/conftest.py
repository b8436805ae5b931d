"""Fixtures of the CLI tests: `actlab results` reads the fake finished experiment of the results tests."""

from __future__ import annotations

from tests.results.conftest import app, client, db, finished_experiment, settings

__all__ = ["app", "client", "db", "finished_experiment", "settings"]
