"""The step column (epoch_metrics.step) in the metrics JSON, CSV and Parquet and through an archive; an archive
written before the column existed imports with it empty."""

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
from tests.archives.test_train_metrics import _import, epoch_values
from tests.results import conftest as results_fixtures

settings = results_fixtures.settings
app = results_fixtures.app
client = results_fixtures.client
db = results_fixtures.db
finished_experiment = results_fixtures.finished_experiment


def _steps(db: Session, experiment_id: uuid.UUID) -> list[tuple[int, Any]]:
    return epoch_values(db, experiment_id, EpochMetric.step)


def _with_steps(db: Session, experiment_id: uuid.UUID) -> list[tuple[int, Any]]:
    runs = select(Run.id).where(Run.experiment_id == experiment_id).scalar_subquery()
    db.execute(update(EpochMetric).where(EpochMetric.run_id.in_(runs)).values(step=EpochMetric.epoch * 7))
    db.commit()
    return _steps(db, experiment_id)


def test_the_metrics_serve_the_step_beside_the_epoch(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    stored = _with_steps(db, finished_experiment)
    assert stored and all(step == 7 * epoch for epoch, step in stored)
    url = f"/v1/experiments/{finished_experiment}/metrics"
    rows = client.get(url).json()
    assert [(row["epoch"], row["step"]) for row in rows] == stored
    frame = pd.read_csv(io.StringIO(client.get(url, params={"format": "csv"}).text))
    assert list(frame.columns).index("step") == list(frame.columns).index("epoch") + 1
    assert list(zip(frame["epoch"], frame["step"], strict=True)) == stored
    parquet = pd.read_parquet(io.BytesIO(client.get(url, params={"format": "parquet"}).content))
    assert str(parquet["step"].dtype) == "int64"
    assert list(zip(parquet["epoch"], parquet["step"], strict=True)) == stored


def test_steps_survive_an_export_and_import(client: TestClient, finished_experiment: uuid.UUID, db: Session) -> None:
    stored = _with_steps(db, finished_experiment)
    assert _steps(db, _import(client, _export(client, finished_experiment))) == stored


def test_an_archive_without_the_column_imports_with_empty_steps(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    _with_steps(db, finished_experiment)
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        metrics = pd.read_csv(opened.open("metrics.csv"))
    older = metrics.drop(columns=["step"]).to_csv(index=False).encode()
    imported = _steps(db, _import(client, _rewrite(archive, {"metrics.csv": older})))
    assert imported and {step for _, step in imported} == {None}
