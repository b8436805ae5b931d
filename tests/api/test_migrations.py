"""The Alembic migrations build exactly the schema of app.models, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text
from sqlalchemy.engine import Engine

import app.models  # noqa: F401  (registers every table)
from app.db import Base
from app.migrate import alembic_config, current_revision, head_revision, upgrade_database
from tests.fixtures import fresh_postgres_database


def _differences(engine: Engine, metadata: MetaData) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def _drifted_metadata() -> MetaData:
    """A copy of the ORM metadata with one extra column, to show that the comparison notices drift."""
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["runs"].append_column(Column("not_in_migrations", Integer))
    return drifted


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrated.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards."""
    with fresh_postgres_database("actlab_migrations") as url:
        yield url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_schema_matches_the_models(backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    upgrade_database(url)
    engine = create_engine(url)
    try:
        assert current_revision(url) == head_revision()
        assert _differences(engine, Base.metadata) == []
        # The comparison is live: a column the migrations lack shows up.
        drift = _differences(engine, _drifted_metadata())
        assert [(item[0], item[3].name) for item in drift] == [("add_column", "not_in_migrations")]
        indexes = {index["name"]: index for index in inspect(engine).get_indexes("experiments")}
        assert indexes["ix_experiments_anonymous_idempotency_key"]["unique"]
    finally:
        engine.dispose()


def test_anonymous_idempotency_keys_are_unique_in_the_database(sqlite_url: str) -> None:
    upgrade_database(sqlite_url)
    engine = create_engine(sqlite_url)
    insert = text(
        "INSERT INTO experiments (id, name, status, spec, submitted_spec, spec_hash, spec_version, device, "
        "total_epochs, idempotency_key, created_at) VALUES (:id, 'x', 'queued', '{}', '{}', 'h', 1, 'cpu', 1, "
        "'same-key', '2025-01-01 00:00:00')"
    )
    try:
        with engine.begin() as connection:
            connection.execute(insert, {"id": uuid.uuid4().hex})
        with pytest.raises(Exception, match="UNIQUE"), engine.begin() as connection:
            connection.execute(insert, {"id": uuid.uuid4().hex})
    finally:
        engine.dispose()


def test_upgrade_is_repeatable_and_downgrade_removes_everything(sqlite_url: str) -> None:
    upgrade_database(sqlite_url)
    upgrade_database(sqlite_url)  # already at head: nothing to do, no error
    command.downgrade(alembic_config(sqlite_url), "base")
    engine = create_engine(sqlite_url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_seed_extensions_migrate_in_place_keeping_runs_and_metrics(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    command.upgrade(alembic_config(url), "0001_initial")
    engine = create_engine(url)
    experiment_id, run_id = uuid.uuid4(), uuid.uuid4()
    key = (lambda value: value.hex) if backend == "sqlite" else str
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO experiments (id, name, status, spec, submitted_spec, spec_hash, spec_version, device, "
                    "total_epochs, created_at) VALUES (:id, 'x', 'succeeded', '{}', '{}', 'h', 1, 'cpu', 1, "
                    "'2025-01-01 00:00:00')"
                ),
                {"id": key(experiment_id)},
            )
            connection.execute(
                text(
                    "INSERT INTO runs (id, experiment_id, activation_index, activation_label, activation_name, seed, "
                    "status, attempt, epochs_completed, created_at) VALUES (:id, :experiment, 0, 'relu', 'relu', 0, "
                    "'succeeded', 1, 1, '2025-01-01 00:00:00')"
                ),
                {"id": key(run_id), "experiment": key(experiment_id)},
            )
            connection.execute(
                text(
                    "INSERT INTO epoch_metrics (run_id, epoch, attempt, train_accuracy, test_accuracy, epoch_seconds, "
                    "samples_per_second, lr, created_at) VALUES (:run, 1, 1, 0.5, 0.5, 0.1, 10.0, 0.01, '2025-01-01 00:00:00')"
                ),
                {"run": key(run_id)},
            )
        for revision in ("head", "0001_initial", "head"):
            if revision == "head":
                upgrade_database(url)
            else:
                command.downgrade(alembic_config(url), revision)
            with engine.connect() as connection:
                # The runs table is altered in place: its rows, and the metric rows that cascade from them, stay.
                assert connection.execute(text("SELECT count(*) FROM runs")).scalar_one() == 1
                assert connection.execute(text("SELECT count(*) FROM epoch_metrics")).scalar_one() == 1
        with engine.connect() as connection:
            assert connection.execute(text("SELECT seed_extension_id FROM runs")).scalar_one() is None
            assert connection.execute(text("SELECT count(*) FROM seed_extensions")).scalar_one() == 0
    finally:
        engine.dispose()
