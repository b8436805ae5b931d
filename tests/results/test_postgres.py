"""The results endpoints on the real PostgreSQL: tables, report, events, export and import."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.migrate import upgrade_database
from tests.fixtures import fresh_postgres_database
from tests.results.conftest import insert_experiment

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database of its own, dropped afterwards."""
    with fresh_postgres_database("actlab_results") as url:
        upgrade_database(url)
        yield url


def test_results_export_and_import_on_postgresql(postgres_url: str) -> None:
    app = create_app(Settings(DATABASE_URL=postgres_url, BROKER_URL="filesystem://", auth_required=False))
    with TestClient(app) as client:
        with app.state.session_factory() as session:
            experiment_id = insert_experiment(session)
        first = pd.read_csv(io.BytesIO(client.get(f"/v1/experiments/{experiment_id}/results?format=csv").content))
        assert list(first["activation"]) == ["relu", "sigmoid", "prelu", "swish_b"]
        assert first.loc[first["activation"] == "sigmoid", "verdict"].item() == "worse"
        parquet = client.get(f"/v1/experiments/{experiment_id}/results?format=parquet")
        assert pd.read_parquet(io.BytesIO(parquet.content))["n"].tolist() == first["n"].tolist()
        assert client.get(f"/experiments/{experiment_id}").status_code == 200
        with client.stream("GET", f"/v1/experiments/{experiment_id}/events") as stream:
            assert "event: end" in "".join(stream.iter_text())
        archive = client.get(f"/v1/experiments/{experiment_id}/export").content
        imported = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
        assert imported.status_code == 201, imported.text
        second = pd.read_csv(
            io.BytesIO(client.get(f"/v1/experiments/{imported.json()['id']}/results?format=csv").content)
        )
        for column in ("n", "mean", "ci_low", "p_holm", "verdict", "seeds"):
            assert [str(value) for value in first[column]] == [str(value) for value in second[column]], column
        diagnostics = client.get(f"/v1/experiments/{imported.json()['id']}/diagnostics").json()
        prelu = next(row for row in diagnostics if row["activation"] == "prelu")
        assert prelu["learned_parameters"] == {"slope": pytest.approx(0.12)}


def test_cached_results_on_postgresql_are_the_same_bytes_until_an_epoch_row_changes_them(postgres_url: str) -> None:
    from sqlalchemy import select

    from app.metrics.write_repository import upsert_epoch_metrics_of_runs
    from app.models import Run
    from tests.api.test_retry import _report

    app = create_app(Settings(DATABASE_URL=postgres_url, BROKER_URL="filesystem://", auth_required=False))
    with TestClient(app) as client:
        with app.state.session_factory() as session:
            experiment_id = insert_experiment(session)
        url = f"/v1/experiments/{experiment_id}/results?view=runs&format=csv"
        first = client.get(url).content
        assert client.get(url).content == first
        with app.state.session_factory() as session:
            run = session.scalars(select(Run).where(Run.experiment_id == experiment_id, Run.seed == 0)).first()
            assert run is not None and run.activation_label == "relu"
            report = _report(4, 0.25)
            upsert_epoch_metrics_of_runs(session=session, writes=[(run.id, 1, report)])
            session.commit()
        rows = pd.read_csv(io.BytesIO(client.get(url).content))
        assert rows.loc[rows["run_id"] == str(run.id), "value"].item() == 0.25
