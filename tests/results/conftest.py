"""Fixtures of the results tests: a migrated SQLite file per test, the app, and a fake finished experiment."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app
from app.models import EpochMetric, Experiment, LayerMetric, Run
from app.spec import ExperimentSpec
from tests.fixtures import sqlite_copy
from tests.results.synthetic import SyntheticArm, synthetic_tables

FAKE_SPEC: dict[str, Any] = {
    "name": "fake finished grid",
    "dataset": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [16, 16]},
    "activations": [
        "relu",
        "sigmoid",
        {"name": "prelu"},
        {"name": "custom", "expression": "x * sigmoid(beta * x)", "learnable": {"beta": 1.0}, "label": "swish_b"},
    ],
    "seeds": [0, 1, 2, 3, 4, 5],
    "training": {"epochs": 4},
    "device": "cpu",
}

FAKE_ARMS = [
    SyntheticArm("relu", "relu", 0.90, noise=0.004, epoch_seconds=0.10, dead_fraction=0.2),
    SyntheticArm(
        "sigmoid",
        "sigmoid",
        0.12,
        noise=0.004,
        epoch_seconds=0.11,
        statuses={0: "diverged", 1: "failed", 2: "cancelled"},
        gradient_profile=(2e-5, 1e-2, 1.0),
        saturated_fraction=0.9,
    ),
    SyntheticArm("prelu", "prelu", 0.91, noise=0.004, epoch_seconds=0.20, parameters={"slope": 0.12}),
    SyntheticArm("swish_b", "custom", 0.905, noise=0.004, epoch_seconds=0.30, parameters={"beta": 1.6}),
]


@pytest.fixture
def settings(tmp_path: Path, migrated_template: Path) -> Settings:
    # Ownership is tested in tests/api/test_auth.py; these tests act as the local admin.
    return Settings(
        DATABASE_URL=sqlite_copy(migrated_template, tmp_path / "results.db"),
        BROKER_URL="filesystem://",
        broker_folder=tmp_path / "broker",
        auth_required=False,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def db(app: FastAPI) -> Iterator[Session]:
    session: Session = app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


def _float_or_none(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def insert_experiment(
    session: Session,
    *,
    spec_payload: dict[str, Any] = FAKE_SPEC,
    arms: Sequence[SyntheticArm] = FAKE_ARMS,
    status: str = "partial",
    created_at: datetime = datetime(2025, 11, 27, 10, 0, tzinfo=UTC),
) -> uuid.UUID:
    """Store an experiment with runs, epoch metrics and layer metrics through the ORM; returns its id.

    Experiments listed newest first need distinct ``created_at``: equal ones order by their random ids.
    """
    spec = ExperimentSpec.model_validate(spec_payload)
    runs_frame, metrics, layers = synthetic_tables(arms, seeds=spec.seeds, epochs=spec.training.epochs)
    start = created_at
    experiment = Experiment(
        id=uuid.uuid4(),
        name=spec.name,
        status=status,
        spec=spec.model_dump(mode="json"),
        submitted_spec=spec_payload,
        spec_hash=spec.spec_hash(),
        spec_version=1,
        device=spec.device,
        queue="cpu",
        total_epochs=len(spec.arms()) * spec.training.epochs,
        created_at=start,
        started_at=start + timedelta(seconds=1),
        finished_at=None if status in ("queued", "running") else start + timedelta(minutes=5),
    )
    session.add(experiment)
    run_ids: dict[str, uuid.UUID] = {}
    for record in runs_frame.to_dict("records"):
        run_id = uuid.uuid4()
        run_ids[record["run_id"]] = run_id
        epochs = int((metrics["run_id"] == record["run_id"]).sum())
        finished = record["status"] not in ("queued", "running")
        session.add(
            Run(
                id=run_id,
                experiment_id=experiment.id,
                activation_index=int(record["activation_index"]),
                activation_label=record["activation"],
                activation_name=record["activation_name"],
                seed=int(record["seed"]),
                status=record["status"],
                attempt=1,
                device="cpu",
                epochs_completed=epochs,
                diverged_epoch=epochs if record["status"] == "diverged" else None,
                training_seconds=0.5 * epochs,
                error="synthetic failure" if record["status"] == "failed" else None,
                created_at=start,
                started_at=start + timedelta(seconds=2),
                finished_at=start + timedelta(minutes=4) if finished else None,
            )
        )
    session.flush()
    for record in metrics.to_dict("records"):
        session.add(
            EpochMetric(
                run_id=run_ids[record["run_id"]],
                epoch=int(record["epoch"]),
                attempt=1,
                train_loss=_float_or_none(record["train_loss"]),
                train_accuracy=float(record["train_accuracy"]),
                test_loss=_float_or_none(record["test_loss"]),
                test_accuracy=float(record["test_accuracy"]),
                epoch_seconds=float(record["epoch_seconds"]),
                samples_per_second=1000.0,
                lr=0.001,
            )
        )
    for record in layers.to_dict("records"):
        session.add(
            LayerMetric(
                run_id=run_ids[record["run_id"]],
                epoch=int(record["epoch"]),
                layer=int(record["layer"]),
                layer_name=record["layer_name"],
                attempt=1,
                grad_norm=float(record["grad_norm"]),
                weight_norm=1.0,
                activation_mean=0.1,
                activation_std=0.5,
                dead_fraction=_float_or_none(record["dead_fraction"]),
                saturated_fraction=_float_or_none(record["saturated_fraction"]),
                activation_parameters=record["activation_parameters"],
            )
        )
    session.commit()
    return experiment.id


@pytest.fixture
def finished_experiment(db: Session) -> uuid.UUID:
    """A partial experiment: relu, prelu and swish_b trained on 6 seeds; sigmoid diverged, failed, was cancelled."""
    return insert_experiment(db)
