"""Archives keep how each epoch's train metrics were measured (epoch_metrics.train_metrics); an archive written before
the column existed imports as running, the only kind there was; an unknown kind is a 422 naming the row."""

from __future__ import annotations

import io
import uuid
import zipfile
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import EpochMetric, Run
from tests.archives.test_endpoints import _export, _rewrite
from tests.results import conftest as results_fixtures

settings = results_fixtures.settings
app = results_fixtures.app
client = results_fixtures.client
db = results_fixtures.db
finished_experiment = results_fixtures.finished_experiment


def epoch_values(db: Session, experiment_id: uuid.UUID, column: Any) -> list[tuple[int, Any]]:
    """(epoch, the column's value) of every metrics row of the experiment, run by run."""
    db.expire_all()
    statement = (
        select(EpochMetric.epoch, column)
        .join(Run, Run.id == EpochMetric.run_id)
        .where(Run.experiment_id == experiment_id)
        .order_by(Run.activation_index, Run.seed, EpochMetric.epoch)
    )
    return [(epoch, value) for epoch, value in db.execute(statement)]


def _kinds(db: Session, experiment_id: uuid.UUID) -> list[tuple[int, Any]]:
    return epoch_values(db, experiment_id, EpochMetric.train_metrics)


def _import(client: TestClient, archive: bytes) -> uuid.UUID:
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


def test_train_metrics_survive_an_export_and_import(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    runs = select(Run.id).where(Run.experiment_id == finished_experiment).scalar_subquery()
    db.execute(
        update(EpochMetric)
        .where(EpochMetric.run_id.in_(runs), EpochMetric.epoch > 1)
        .values(train_metrics="after_epoch")
    )
    db.commit()
    original = _kinds(db, finished_experiment)
    assert {kind for _, kind in original} == {"running", "after_epoch"}
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert set(pd.read_csv(opened.open("metrics.csv"))["train_metrics"]) == {"running", "after_epoch"}
    assert _kinds(db, _import(client, archive)) == original


def test_an_archive_without_the_column_imports_as_running(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        metrics = pd.read_csv(opened.open("metrics.csv"))
    older = metrics.drop(columns=["train_metrics"]).to_csv(index=False).encode()
    imported = _kinds(db, _import(client, _rewrite(archive, {"metrics.csv": older})))
    assert imported and {kind for _, kind in imported} == {"running"}


def test_an_unknown_kind_is_a_422_naming_the_row(client: TestClient, finished_experiment: uuid.UUID) -> None:
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        metrics = pd.read_csv(opened.open("metrics.csv"))
    metrics.loc[2, "train_metrics"] = "final"
    bad = _rewrite(archive, {"metrics.csv": metrics.to_csv(index=False).encode()})
    response = client.post("/v1/experiments/import", content=bad, headers={"Content-Type": "application/zip"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == "archive.metrics.csv.row 3.train_metrics"
    assert "'final' must be running, after_epoch or empty" in detail["msg"]
