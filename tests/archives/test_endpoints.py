"""Archives over HTTP on SQLite: export a fake finished experiment, import it back, reject bad archives."""

from __future__ import annotations

import io
import json
import random
import uuid
import zipfile

import pandas as pd
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, Run
from tests.results import conftest as results_fixtures
from tests.results.conftest import FAKE_SPEC
from tests.results.synthetic_factorial import insert_factorial_experiment

# The results tests' app and fake finished experiment (tests/results/conftest.py), used here as they are.
settings = results_fixtures.settings
app = results_fixtures.app
client = results_fixtures.client
db = results_fixtures.db
finished_experiment = results_fixtures.finished_experiment


def _results(client: TestClient, experiment_id: uuid.UUID) -> pd.DataFrame:
    response = client.get(f"/v1/experiments/{experiment_id}/results")
    assert response.status_code == 200, response.text
    return pd.DataFrame(json.loads(response.content))


def _export(client: TestClient, experiment_id: uuid.UUID) -> bytes:
    response = client.get(f"/v1/experiments/{experiment_id}/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    return response.content


def _table_counts(db: Session) -> dict[str, int]:
    db.expire_all()
    return {
        model.__tablename__: int(db.scalar(select(func.count()).select_from(model)) or 0)
        for model in (Experiment, Run, EpochMetric, LayerMetric)
    }


def test_export_then_import_recreates_the_experiment(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        names = set(opened.namelist())
        assert {"spec.json", "runs.csv", "metrics.csv", "layer_metrics.csv", "results.csv"} <= names
        assert json.loads(opened.read("spec.json"))["name"] == FAKE_SPEC["name"]
        metrics = pd.read_csv(opened.open("metrics.csv"))
        assert {"run_id", "activation", "seed", "epoch", "spec_hash", "recorded_at"} <= set(metrics.columns)
    before = _table_counts(db)
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["imported_from"] == str(finished_experiment)
    assert body["status"] == "partial"
    after = _table_counts(db)
    assert {table: after[table] - before[table] for table in after} == {
        "experiments": 1,
        "runs": 24,
        "epoch_metrics": before["epoch_metrics"],
        "layer_metrics": before["layer_metrics"],
    }
    imported = uuid.UUID(body["id"])
    statuses = sorted(db.scalars(select(Run.status).where(Run.experiment_id == imported)))
    original = sorted(db.scalars(select(Run.status).where(Run.experiment_id == finished_experiment)))
    assert statuses == original
    first = _results(client, finished_experiment)
    second = _results(client, imported)
    for column in ("n", "mean", "ci_low", "ci_high", "p_holm", "verdict", "seeds", "diverged", "failed"):
        left, right = first[column].tolist(), second[column].tolist()
        assert [str(value) for value in left] == [str(value) for value in right], column
    assert set(second["spec_hash"]) == set(first["spec_hash"])


def test_import_accepts_a_multipart_upload(client: TestClient, finished_experiment: uuid.UUID) -> None:
    archive = _export(client, finished_experiment)
    response = client.post("/v1/experiments/import", files={"file": ("archive.zip", archive, "application/zip")})
    assert response.status_code == 201, response.text


def _rewrite(archive: bytes, replacements: dict[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(archive)) as source,
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as target,
    ):
        for name in source.namelist():
            if name in replacements:
                content = replacements[name]
                if content is not None:
                    target.writestr(name, content)
            else:
                target.writestr(name, source.read(name))
    return buffer.getvalue()


def test_bad_archives_are_rejected_and_store_nothing(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    archive = _export(client, finished_experiment)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        spec = json.loads(opened.read("spec.json"))
        runs = opened.read("runs.csv").decode()
        metrics = opened.read("metrics.csv").decode()
    bad_spec = {**spec, "activations": [*spec["activations"][:-1], {"name": "relu2"}]}
    cases: list[tuple[bytes, str]] = [
        (b"not a zip at all", "archive.zip"),
        (_rewrite(archive, {"runs.csv": None}), "archive.zip"),
        (_rewrite(archive, {"spec.json": json.dumps(bad_spec).encode()}), "archive.spec.json.activations.3.name"),
        (_rewrite(archive, {"spec.json": b"{"}), "archive.spec.json"),
        (_rewrite(archive, {"runs.csv": runs.replace(",sigmoid,", ",tanh,", 1).encode()}), "archive.runs.csv.row"),
        (_rewrite(archive, {"runs.csv": runs.replace("succeeded", "great", 1).encode()}), "archive.runs.csv.row"),
        (
            _rewrite(archive, {"metrics.csv": metrics + metrics.splitlines()[1] + "\n"}),
            "archive.metrics.csv",
        ),
    ]
    before = _table_counts(db)
    for content, location in cases:
        response = client.post("/v1/experiments/import", content=content, headers={"Content-Type": "application/zip"})
        assert response.status_code == 422, (location, response.text)
        assert response.json()["detail"][0]["loc"].startswith(location), response.json()
    assert client.post("/v1/experiments/import", content=b"").status_code == 422
    assert _table_counts(db) == before


def test_import_accepts_an_archive_larger_than_the_spec_body_limit(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    archive = _export(client, finished_experiment)
    # Incompressible padding pushes the upload past max_body_bytes (64 KiB) but not max_import_bytes.
    buffer = io.BytesIO(archive)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_STORED) as opened:
        opened.writestr("padding.bin", random.Random(0).randbytes(200_000))
    padded = buffer.getvalue()
    assert len(padded) > client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post("/v1/experiments/import", content=padded, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text


def test_a_factorial_experiment_exported_and_imported_keeps_its_cells_metrics_and_ranking(
    client: TestClient, db: Session
) -> None:
    original = insert_factorial_experiment(db)
    archive = _export(client, original)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        runs = pd.read_csv(opened.open("runs.csv"))
        metrics = pd.read_csv(opened.open("metrics.csv"))
        layers = pd.read_csv(opened.open("layer_metrics.csv"))
    assert sorted(set(runs["cell_index"])) == [0, 1, 2, 3]
    # Like the metric tables: the cell's label and one column per factor path (lists as compact JSON text).
    served = pd.read_csv(io.StringIO(client.get(f"/v1/experiments/{original}/metrics?format=csv").text))
    key = ["run_id", "epoch"]
    for frame in (runs, metrics, layers):
        assert {"cell", "model.hidden", "training.lr"} <= set(frame.columns)
    assert set(metrics["model.hidden"]) == {"[16]", "[16,16,16,16]"}
    assert set(metrics["training.lr"]) == {0.001, 0.01}
    pd.testing.assert_frame_equal(
        metrics[[*key, "cell", "model.hidden", "training.lr"]].sort_values(key).reset_index(drop=True),
        served[[*key, "cell", "model.hidden", "training.lr"]].sort_values(key).reset_index(drop=True),
    )
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    imported = uuid.UUID(response.json()["id"])
    cells = {
        experiment: sorted(
            db.execute(
                select(Run.cell_index, Run.cell_label, Run.activation_label, Run.seed).where(
                    Run.experiment_id == experiment
                )
            ).all()
        )
        for experiment in (original, imported)
    }
    assert cells[imported] == cells[original] and len(cells[imported]) == 48
    dropped = {"run_id", "run_ids", "recorded_at", "spec_hash", "experiment_id"}  # ids are new on import
    for path in ("metrics", "results", "results?view=pairs", "results?view=ranking", "results?view=effects"):
        tables = []
        for experiment in (original, imported):
            answer = client.get(f"/v1/experiments/{experiment}/{path}")
            assert answer.status_code == 200, (path, answer.text)
            frame = pd.DataFrame(json.loads(answer.content))
            tables.append(frame.drop(columns=[column for column in dropped if column in frame.columns]))
        assert not tables[0].empty, path
        pd.testing.assert_frame_equal(tables[0], tables[1], obj=path)
