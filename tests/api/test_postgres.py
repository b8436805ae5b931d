"""The API on the real PostgreSQL: JSONB specs, UUID keys, row locks and server-side cursors."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from app.models import EpochMetric, Run
from tests.api.conftest import parquet_rows, postgres_client_of, small_spec


@pytest.fixture
def postgres_client(tmp_path: Path) -> Iterator[TestClient]:
    with postgres_client_of("actlab_api", tmp_path) as client:
        yield client


def test_submit_stream_and_cancel_on_postgres(postgres_client: TestClient) -> None:
    client = postgres_client
    headers = {"Idempotency-Key": "pg-key"}
    created = client.post("/v1/experiments", json=small_spec(), headers=headers)
    assert created.status_code == 202
    assert client.post("/v1/experiments", json=small_spec(), headers=headers).json()["id"] == created.json()["id"]
    experiment_id = created.json()["id"]

    session_factory = client.app.state.session_factory  # type: ignore[attr-defined]
    with session_factory() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == uuid.UUID(experiment_id))))
        session.execute(
            insert(EpochMetric),
            [
                {"run_id": run_id, "epoch": epoch, "attempt": 1, "train_loss": 0.5, "test_accuracy": 0.9}
                for run_id in run_ids
                for epoch in range(1, 1501)
            ],
        )
        session.commit()

    csv_text = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"format": "csv"}).text
    frame = pd.read_csv(io.StringIO(csv_text))
    assert len(frame) == 6000
    assert frame.groupby("run_id")["epoch"].max().tolist() == [1500] * 4
    seed_rows = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"seed": 1}).json()
    assert len(seed_rows) == 3000
    # Parquet holds the JSON rows, read through the same server-side cursor.
    parquet = client.get(f"/v1/experiments/{experiment_id}/metrics", params={"seed": 1, "format": "parquet"})
    assert parquet_rows(parquet.content) == seed_rows

    nul = client.get("/v1/experiments", params={"name": "a\u0000"})
    assert nul.status_code == 422
    assert nul.json()["detail"][0] == {
        "loc": "query.name",
        "msg": "text may not contain the NUL character (\\u0000)",
        "type": "value_error",
    }
    listed = client.get("/v1/experiments", params={"name": "TINY"}).json()
    assert [item["id"] for item in listed["items"]] == [experiment_id]

    cancelled = client.post(f"/v1/experiments/{experiment_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert {run["status"] for run in cancelled["runs"]} == {"cancelled"}
