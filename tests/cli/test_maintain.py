"""`actlab maintain`: one pass on the configured database, saying what it did."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.engine import Engine

from app import dispatch
from app.cli import main
from app.config import get_settings
from app.db import make_engine, session_scope
from app.models import Run
from tests.fixtures import sqlite_copy
from tests.worker.conftest import add_experiment
from worker.celery_app import TRAIN_RUNS_TASK, configure


@pytest.fixture
def configured(tmp_path: Path, migrated_template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The CLI's settings point at a fresh SQLite database and a folder broker under tmp_path."""
    url = sqlite_copy(migrated_template, tmp_path / "maintain.db")
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BROKER_URL", "filesystem://")
    monkeypatch.setenv("ACTLAB_BROKER_FOLDER", str(tmp_path / "broker"))
    monkeypatch.setenv("ACTLAB_QUEUED_GRACE_SECONDS", "0.001")
    get_settings.cache_clear()
    engine = make_engine(url)
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def test_maintain_sends_the_runs_the_api_stored_but_never_enqueued(
    configured: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_ids = add_experiment(configured)
    sent: list[uuid.UUID] = []
    # The configured folder broker, as the worker's own Celery app would send to it.
    producer = Celery("test-producer")
    configure(producer, get_settings())

    def enqueue_runs(*, run_ids: list[uuid.UUID], queue: str) -> None:
        for run_id in run_ids:
            producer.send_task(TRAIN_RUNS_TASK, kwargs={"run_ids": [str(run_id)]}, queue=queue)
        sent.extend(run_ids)

    monkeypatch.setattr(dispatch, "enqueue_runs", enqueue_runs)

    assert main(["maintain"]) == 0
    assert "4 queued run(s) sent to the broker" in capsys.readouterr().out
    assert sorted(sent) == sorted(run_ids)
    with session_scope(configured) as session:
        assert all(session.scalars(select(Run.enqueued_at)).all())

    # The broker holds their tasks now: nothing to send.
    assert main(["maintain", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "skipped": False,
        "requeued_stale": [],
        "failed_stale": [],
        "enqueued": [],
    }


def test_maintain_without_a_schema_says_to_migrate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        assert main(["maintain"]) == 1
    finally:
        get_settings.cache_clear()
    assert "actlab migrate" in capsys.readouterr().err
