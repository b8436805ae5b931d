"""The metric tables: JSON and CSV, filters, pandas round trips and streaming."""

from __future__ import annotations

import io
import json
import math
import uuid
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.metrics.repository import EPOCH_METRIC_COLUMNS, LAYER_METRIC_COLUMNS, MetricFilters
from app.metrics.service import stream_metric_table
from app.models import EpochMetric, LayerMetric, Run, RunStatus
from tests.api.conftest import parquet_rows, small_spec


def _submit_finished(client: TestClient, db: Session, *, with_validation: bool = False) -> tuple[str, list[Run]]:
    """Submit a 2 x 2 grid and write three epochs of metrics per run, as a worker would."""
    spec = small_spec(training={"epochs": 3, "validation_fraction": 0.2 if with_validation else 0.0})
    experiment_id = client.post("/v1/experiments", json=spec).json()["id"]
    runs = list(
        db.scalars(
            select(Run).where(Run.experiment_id == uuid.UUID(experiment_id)).order_by(Run.activation_index, Run.seed)
        )
    )
    # Insert in an order unlike the API's, so the test shows the ordering is the API's doing.
    for run in reversed(runs):
        run.status = RunStatus.succeeded
        run.epochs_completed = 3
        for epoch in (3, 1, 2):
            db.add(
                EpochMetric(
                    run_id=run.id,
                    epoch=epoch,
                    attempt=1,
                    train_loss=1.0 / epoch + run.seed,
                    train_accuracy=0.5 + 0.1 * epoch,
                    test_loss=1.2 / epoch,
                    test_accuracy=0.45 + 0.1 * epoch,
                    val_loss=(1.1 / epoch) if with_validation else None,
                    val_accuracy=(0.4 + 0.1 * epoch) if with_validation else None,
                    epoch_seconds=0.25,
                    samples_per_second=4000.0,
                    lr=0.001,
                    grad_norm_ratio=0.5,
                    gradient_flag="vanishing" if run.activation_label == "tanh" and epoch == 3 else None,
                )
            )
            for layer in (1, 0):
                db.add(
                    LayerMetric(
                        run_id=run.id,
                        epoch=epoch,
                        layer=layer,
                        layer_name=f"hidden.{layer}",
                        attempt=1,
                        grad_norm=0.1 * (layer + 1),
                        weight_norm=2.0,
                        activation_mean=0.3,
                        activation_std=0.5,
                        dead_fraction=0.05 if run.activation_label == "relu" else None,
                        saturated_fraction=0.0,
                        activation_parameters={"slope": 0.25, "note": "a,b"} if layer == 0 else None,
                    )
                )
    db.commit()
    return experiment_id, runs


def test_epoch_metrics_as_json_in_grid_order(client: TestClient, db: Session) -> None:
    experiment_id, runs = _submit_finished(client, db)

    response = client.get(f"/v1/experiments/{experiment_id}/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    rows = response.json()
    assert len(rows) == 12
    assert list(rows[0]) == list(EPOCH_METRIC_COLUMNS)
    assert [(row["activation"], row["seed"], row["epoch"]) for row in rows[:4]] == [
        ("relu", 0, 1),
        ("relu", 0, 2),
        ("relu", 0, 3),
        ("relu", 1, 1),
    ]
    assert rows[-1]["activation"] == "tanh"
    assert rows[-1]["gradient_flag"] == "vanishing"
    assert rows[0]["run_id"] == str(runs[0].id)
    assert rows[0]["val_loss"] is None
    assert rows[1]["train_loss"] == pytest.approx(0.5)


def test_epoch_metrics_csv_loads_with_pandas(client: TestClient, db: Session) -> None:
    experiment_id, runs = _submit_finished(client, db)

    response = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "csv"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(response.text))
    assert list(frame.columns) == list(EPOCH_METRIC_COLUMNS)
    assert len(frame) == 12
    assert frame["val_loss"].isna().all()  # empty cells, not the text "None"
    assert frame["train_loss"].dtype == float
    assert set(frame["run_id"]) == {str(run.id) for run in runs}
    assert frame.groupby("activation")["test_accuracy"].max().to_dict() == pytest.approx({"relu": 0.75, "tanh": 0.75})


def test_validation_columns_are_filled_when_present(client: TestClient, db: Session) -> None:
    experiment_id, _runs = _submit_finished(client, db, with_validation=True)
    text = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "csv"}).text
    frame = pd.read_csv(io.StringIO(text))
    assert frame["val_accuracy"].notna().all()
    assert frame.loc[frame["epoch"] == 2, "val_loss"].iloc[0] == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"activation": "tanh"}, {("tanh", 0), ("tanh", 1)}),
        ({"seed": 1}, {("relu", 1), ("tanh", 1)}),
        ({"activation": "relu", "seed": 0}, {("relu", 0)}),
    ],
)
def test_metric_filters_by_activation_and_seed(
    client: TestClient, db: Session, params: dict[str, Any], expected: set[tuple[str, int]]
) -> None:
    experiment_id, _runs = _submit_finished(client, db)
    rows = client.get(f"/v1/experiments/{experiment_id}/metrics", params=params).json()
    assert {(row["activation"], row["seed"]) for row in rows} == expected
    assert len(rows) == 3 * len(expected)


def test_metric_filters_by_run_and_epoch_range(client: TestClient, db: Session) -> None:
    experiment_id, runs = _submit_finished(client, db)
    rows = client.get(
        f"/v1/experiments/{experiment_id}/metrics",
        params={"run_id": str(runs[2].id), "epoch_min": 2, "epoch_max": 3},
    ).json()
    assert [(row["run_id"], row["epoch"]) for row in rows] == [(str(runs[2].id), 2), (str(runs[2].id), 3)]


def test_layer_metrics_json_and_csv(client: TestClient, db: Session) -> None:
    experiment_id, _runs = _submit_finished(client, db)

    rows = client.get(f"/v1/experiments/{experiment_id}/layer-metrics").json()
    assert len(rows) == 24
    assert list(rows[0]) == list(LAYER_METRIC_COLUMNS)
    assert [(row["epoch"], row["layer"]) for row in rows[:4]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert rows[0]["activation_parameters"] == {"slope": 0.25, "note": "a,b"}
    assert rows[1]["activation_parameters"] is None

    text = client.get(f"/v1/experiments/{experiment_id}/layer-metrics", params={"format": "csv", "layer": 0}).text
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == list(LAYER_METRIC_COLUMNS)
    assert len(frame) == 12
    assert set(frame["layer"]) == {0}
    # A JSON string in CSV, quoted so its comma does not split the cell.
    assert json.loads(frame["activation_parameters"].iloc[0]) == {"slope": 0.25, "note": "a,b"}
    assert frame.loc[frame["activation"] == "tanh", "dead_fraction"].isna().all()


def test_non_finite_values_become_null_in_json_and_nan_in_csv(client: TestClient, db: Session) -> None:
    experiment_id, runs = _submit_finished(client, db)
    metric = db.scalars(select(EpochMetric).where(EpochMetric.run_id == runs[0].id, EpochMetric.epoch == 3)).one()
    metric.train_loss = math.inf
    db.commit()

    rows = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"run_id": str(runs[0].id)}).json()
    assert rows[2]["train_loss"] is None
    text = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "csv", "run_id": str(runs[0].id)})
    frame = pd.read_csv(io.StringIO(text.text))
    assert math.isinf(frame["train_loss"].iloc[2])


def test_an_experiment_without_metrics_gives_empty_tables(client: TestClient) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    assert client.get(f"/v1/experiments/{experiment_id}/metrics").json() == []
    frame = pd.read_csv(io.StringIO(client.get(f"/v1/experiments/{experiment_id}/metrics?format=csv").text))
    assert list(frame.columns) == list(EPOCH_METRIC_COLUMNS)
    assert frame.empty


@pytest.mark.parametrize(
    ("params", "location", "fragment"),
    [
        ({"format": "xml"}, "query.format", "'json', 'csv' or 'parquet'"),
        ({"epoch_min": -1}, "query.epoch_min", "greater than or equal to 0"),
        ({"epoch_min": 3, "epoch_max": 1}, "query.epoch_min", "not be greater than epoch_max"),
        ({"seed": "one"}, "query.seed", "valid integer"),
        ({"run_id": "42"}, "query.run_id", "valid UUID"),
        ({"activation": "gelu"}, "query.activation", "allowed: relu, tanh"),
        ({"seed": 5}, "query.seed", "allowed: 0, 1"),
        ({"run_id": "00000000-0000-0000-0000-000000000001"}, "query.run_id", "not part of experiment"),
    ],
)
def test_bad_metric_queries_get_422(client: TestClient, params: dict[str, Any], location: str, fragment: str) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    response = client.get(f"/v1/experiments/{experiment_id}/metrics", params=params)
    assert response.status_code == 422
    errors = {error["loc"]: error["msg"] for error in response.json()["detail"]}
    assert fragment in errors[location]


def test_fifty_thousand_rows_stream_in_batches(client: TestClient, db: Session, app: FastAPI) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = list(db.scalars(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))))
    epochs_per_run = 12_500
    db.execute(
        insert(EpochMetric),
        [
            {"run_id": run.id, "epoch": epoch, "attempt": 1, "train_loss": 1.0 / epoch, "test_accuracy": 0.5}
            for run in runs
            for epoch in range(1, epochs_per_run + 1)
        ],
    )
    db.commit()

    csv_response = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "csv"})
    frame = pd.read_csv(io.StringIO(csv_response.text))
    assert len(frame) == 50_000
    assert frame.groupby("run_id")["epoch"].max().tolist() == [epochs_per_run] * 4
    assert frame["epoch"].is_monotonic_increasing is False  # four runs, each counting up again
    assert (frame.groupby("run_id")["epoch"].diff().dropna() == 1).all()

    json_rows = client.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert len(json_rows) == 50_000

    # The encoder writes one chunk per fetched batch instead of building the table in memory.
    chunks = stream_metric_table(
        session_factory=app.state.session_factory,
        experiment_id=uuid.UUID(experiment_id),
        filters=MetricFilters(run_id=runs[0].id),
        table="epoch",
        output_format="json",
        batch_rows=1000,
    )
    sizes = [len(chunk) for chunk in chunks]
    assert len(sizes) == 1 + 13 + 1  # "[", 13 batches for 12,500 rows, "]"
    assert max(sizes) < sum(sizes) / 10  # no chunk holds more than its batch


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("metrics", {}),
        ("metrics", {"activation": "tanh", "epoch_min": 2}),
        ("layer-metrics", {}),
        ("layer-metrics", {"layer": 0, "seed": 1}),
    ],
)
def test_parquet_tables_hold_the_json_rows(client: TestClient, db: Session, path: str, params: dict[str, Any]) -> None:
    experiment_id, runs = _submit_finished(client, db)
    metric = db.scalars(select(EpochMetric).where(EpochMetric.run_id == runs[0].id, EpochMetric.epoch == 3)).one()
    metric.train_loss = math.inf
    db.commit()

    expected = client.get(f"/v1/experiments/{experiment_id}/{path}", params=params).json()
    response = client.get(f"/v1/experiments/{experiment_id}/{path}", params={**params, "format": "parquet"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.headers["content-disposition"].endswith('.parquet"')
    rows = parquet_rows(response.content)
    assert rows == expected
    assert len(rows) > 0
    frame = pd.read_parquet(io.BytesIO(response.content))
    assert list(frame.columns) == list(EPOCH_METRIC_COLUMNS if path == "metrics" else LAYER_METRIC_COLUMNS)


def test_parquet_of_an_empty_table_has_the_columns(client: TestClient) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    frame = pd.read_parquet(io.BytesIO(client.get(f"/v1/experiments/{experiment_id}/metrics?format=parquet").content))
    assert list(frame.columns) == list(EPOCH_METRIC_COLUMNS)
    assert frame.empty
    assert str(frame["train_loss"].dtype) == "float64"
