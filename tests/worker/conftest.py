"""Fixtures of the worker tests: a migrated SQLite database and experiments written straight into it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from app.config import Settings
from app.db import make_engine, session_scope
from app.migrate import upgrade_database
from app.models import Experiment, Run
from app.spec import ExperimentSpec
from tests.fixtures import fresh_postgres_database, sqlite_copy

TINY_SPEC: dict[str, Any] = {
    "name": "tiny spirals",
    "dataset": {"name": "spirals", "params": {"samples": 300}},
    "model": {"kind": "mlp", "hidden": [8]},
    "activations": ["relu", "tanh"],
    "seeds": [0, 1],
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.01},
    "device": "cpu",
}
# 2 activations x 3 seeds; spirals_spec order: relu 0, 1, 2, then tanh 0, 1, 2.
GRID_SPEC: dict[str, Any] = {**TINY_SPEC, "seeds": [0, 1, 2]}


def one_worker_settings(tmp_path: Path, **values: Any) -> Settings:
    """A worker's settings for the tests that train: files under tmp_path, no write retries, one thread; ``values``
    set more."""
    return Settings(
        checkpoint_dir=tmp_path / "checkpoints",
        data_dir=tmp_path / "no-data",
        run_heartbeat_seconds=60,
        database_retry_seconds=0,
        worker_concurrency=1,
        torch_threads=1,
        **values,
    )


def runs_in_order(engine: Engine, run_ids: list[uuid.UUID]) -> list[Run]:
    """The runs of ``run_ids``, in that order."""
    with session_scope(engine) as session:
        found = {run.id: run for run in session.execute(select(Run).where(Run.id.in_(run_ids))).scalars()}
    return [found[run_id] for run_id in run_ids]


@pytest.fixture
def engine(tmp_path: Path, migrated_template: Path) -> Iterator[Engine]:
    """A SQLite database built by the Alembic migrations, as in production."""
    database = make_engine(sqlite_copy(migrated_template, tmp_path / "worker.db"))
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def postgres_worker_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the worker tests, dropped at the end."""
    with fresh_postgres_database("actlab_worker_test") as url:
        upgrade_database(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest, tmp_path: Path, migrated_template: Path) -> Iterator[Engine]:
    """The same migrated schema on SQLite and on the real PostgreSQL (emptied after each test)."""
    if request.param == "sqlite":
        url = sqlite_copy(migrated_template, tmp_path / "worker.db")
    else:
        url = request.getfixturevalue("postgres_worker_url")
    engine = make_engine(url)
    try:
        yield engine
    finally:
        if request.param == "postgresql":
            with engine.begin() as connection:
                connection.execute(
                    text("TRUNCATE experiments, runs, epoch_metrics, layer_metrics, worker_nodes, api_keys CASCADE")
                )
        engine.dispose()


def add_experiment(engine: Engine, spec: dict[str, Any] | None = None, *, queue: str = "cpu") -> list[uuid.UUID]:
    """Store an experiment and its queued runs as the API would; returns the run ids in arm order."""
    parsed = ExperimentSpec.model_validate(spec or TINY_SPEC)
    experiment = Experiment(
        id=uuid.uuid4(),
        name=parsed.name,
        status="queued",
        spec=parsed.model_dump(mode="json"),
        submitted_spec=spec or TINY_SPEC,
        spec_hash=parsed.spec_hash(),
        device=parsed.device,
        queue=queue,
        total_epochs=len(parsed.arms()) * parsed.training.epochs,
    )
    runs = [
        Run(
            id=uuid.uuid4(),
            experiment_id=experiment.id,
            activation_index=arm.activation_index,
            activation_label=arm.label,
            activation_name=parsed.activations[arm.activation_index].canonical_name,
            seed=arm.seed,
            status="queued",
            queue=queue,
        )
        for arm in parsed.arms()
    ]
    with session_scope(engine) as session:
        session.add(experiment)
        session.add_all(runs)
    return [run.id for run in runs]
