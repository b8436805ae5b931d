"""GET /v1/experiments/{id}/robustness: the robustness rows as JSON, CSV and Parquet, with the metric filters."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import EpochMetric, RobustnessResult, Run, RunStatus
from app.results.service import TRACE_COLUMNS
from tests.api.conftest import parquet_rows, small_spec

EVALUATION = {"noise_std": [0.5], "fgsm_epsilon": [0.1, 0.0]}


def submit_measured(client: TestClient, db: Session, **overrides: Any) -> tuple[str, list[Run]]:
    """Submit a version-2 spec with an evaluation block and write each run's robustness rows as a worker would."""
    spec = small_spec(version=2, evaluation=EVALUATION, **overrides)
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    experiment_id = response.json()["id"]
    runs = list(db.scalars(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))))
    # Inserted in an order unlike the API's, so the test shows the ordering is the API's doing.
    for run in reversed(runs):
        run.status = RunStatus.succeeded
        bonus = 0.1 if run.activation_label == "tanh" else 0.0
        for kind, strength, accuracy in (("fgsm", 0.1, 0.4), ("noise", 0.5, 0.7), ("fgsm", 0.0, 0.9)):
            db.add(
                RobustnessResult(
                    run_id=run.id,
                    kind=kind,
                    strength=strength,
                    attempt=1,
                    accuracy=accuracy + bonus - 0.01 * run.seed,
                    loss=float("inf") if kind == "fgsm" and strength > 0 else 0.5,
                )
            )
    db.commit()
    return experiment_id, runs


def test_robustness_rows_as_json_csv_and_parquet(client: TestClient, db: Session) -> None:
    experiment_id, _ = submit_measured(client, db)
    base = f"/v1/experiments/{experiment_id}/robustness"
    rows = client.get(base).json()
    columns = ["run_id", "activation", "seed", "cell", "kind", "strength", "accuracy", "loss"]
    assert list(rows[0]) == columns
    assert [(row["activation"], row["seed"], row["kind"], row["strength"]) for row in rows[:3]] == [
        ("relu", 0, "fgsm", 0.0),
        ("relu", 0, "fgsm", 0.1),
        ("relu", 0, "noise", 0.5),
    ]
    assert len(rows) == 12
    assert rows[1]["loss"] is None, "a loss that was not finite is null"
    assert rows[1]["accuracy"] == 0.4
    frame = pd.read_csv(io.StringIO(client.get(base, params={"format": "csv"}).text))
    assert list(frame.columns) == columns and len(frame) == 12
    assert frame.loc[frame["activation"] == "tanh", "accuracy"].max() == 1.0
    parquet = client.get(base, params={"format": "parquet"})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert parquet_rows(parquet.content) == rows


def test_robustness_filters_are_those_of_the_metric_tables(client: TestClient, db: Session) -> None:
    experiment_id, runs = submit_measured(client, db)
    base = f"/v1/experiments/{experiment_id}/robustness"
    only = client.get(base, params={"activation": "tanh", "seed": 1, "kind": "fgsm"}).json()
    assert [(row["activation"], row["seed"], row["kind"]) for row in only] == [("tanh", 1, "fgsm")] * 2
    one_run = client.get(base, params={"run_id": str(runs[0].id)}).json()
    assert {row["run_id"] for row in one_run} == {str(runs[0].id)} and len(one_run) == 3
    bad_kind = client.get(base, params={"kind": "cw"})
    assert bad_kind.status_code == 422 and "'noise', 'fgsm' or 'pgd'" in bad_kind.text
    bad_activation = client.get(base, params={"activation": "gelu"})
    assert bad_activation.status_code == 422 and "allowed: relu, tanh" in bad_activation.text
    assert client.get(f"/v1/experiments/{uuid.uuid4()}/robustness").status_code == 404


def test_a_factorial_experiment_has_a_column_per_factor_and_factor_filters(client: TestClient, db: Session) -> None:
    experiment_id, _ = submit_measured(client, db, seeds=[0], factors={"model.hidden": [[8], [8, 8]]})
    base = f"/v1/experiments/{experiment_id}/robustness"
    rows = client.get(base).json()
    assert list(rows[0])[-1] == "model.hidden" and len(rows) == 12
    wide = client.get(base, params={"factor.model.hidden": "[8,8]"}).json()
    assert {(row["cell"], row["model.hidden"]) for row in wide} == {("hidden=2x8", "[8,8]")}
    assert len(wide) == 6


def test_an_experiment_without_an_evaluation_block_has_an_empty_table(client: TestClient) -> None:
    experiment_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    assert client.get(f"/v1/experiments/{experiment_id}/robustness").json() == []
    csv = client.get(f"/v1/experiments/{experiment_id}/robustness", params={"format": "csv"}).text
    assert csv.strip() == "run_id,activation,seed,cell,kind,strength,accuracy,loss"


def _measured_grid(client: TestClient, db: Session, **overrides: Any) -> str:
    """Six seeds of relu and tanh: tanh clearly better under noise, clearly worse under FGSM 0.1, the same
    (within a thousandth) at FGSM 0; final train accuracy 0.95, test 0.9 (relu) and 0.85 (tanh)."""
    spec = small_spec(version=2, evaluation=EVALUATION, seeds=[0, 1, 2, 3, 4, 5], **overrides)
    experiment_id = client.post("/v1/experiments", json=spec).json()["id"]
    runs = list(db.scalars(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))))
    for run in runs:
        tanh = run.activation_label == "tanh"
        run.status = RunStatus.succeeded
        db.add(EpochMetric(run_id=run.id, epoch=1, attempt=1, train_accuracy=0.95, test_accuracy=0.85 if tanh else 0.9))
        wobble = 0.001 * (run.seed % 3) - 0.001
        shifts = {("noise", 0.5): 0.1 + 0.01 * run.seed, ("fgsm", 0.1): -0.1 - 0.01 * run.seed, ("fgsm", 0.0): wobble}
        for (kind, strength), shift in shifts.items():
            accuracy = 0.6 + 0.02 * run.seed + (shift if tanh else 0.0)
            db.add(RobustnessResult(run_id=run.id, kind=kind, strength=strength, attempt=1, accuracy=accuracy))
    db.commit()
    return experiment_id


def test_the_robustness_view_gives_mean_ci_verdict_and_gap_per_activation_and_strength(
    client: TestClient, db: Session
) -> None:
    experiment_id = _measured_grid(client, db)
    response = client.get(f"/v1/experiments/{experiment_id}/results", params={"view": "robustness"})
    assert response.status_code == 200, response.text
    rows = {(row["activation"], row["kind"], row["strength"]): row for row in response.json()}
    assert [(row["kind"], row["strength"], row["activation"]) for row in response.json()] == [
        ("noise", 0.5, "relu"),
        ("noise", 0.5, "tanh"),
        ("fgsm", 0.0, "relu"),
        ("fgsm", 0.0, "tanh"),
        ("fgsm", 0.1, "relu"),
        ("fgsm", 0.1, "tanh"),
    ]
    relu = rows[("relu", "noise", 0.5)]
    assert relu["verdict"] == "baseline" and relu["n"] == 6
    assert relu["mean"] == pytest.approx(0.6 + 0.02 * 2.5)
    assert relu["ci_low"] < relu["mean"] < relu["ci_high"]
    assert rows[("tanh", "noise", 0.5)]["verdict"] == "better"
    assert rows[("tanh", "noise", 0.5)]["mean_difference"] == pytest.approx(0.1 + 0.01 * 2.5)
    assert rows[("tanh", "fgsm", 0.1)]["verdict"] == "worse"
    assert rows[("tanh", "fgsm", 0.0)]["verdict"] == "equivalent"
    assert rows[("relu", "fgsm", 0.0)]["generalisation_gap"] == pytest.approx(0.05)
    assert rows[("tanh", "fgsm", 0.0)]["generalisation_gap"] == pytest.approx(0.10)
    frame = pd.read_csv(
        io.StringIO(client.get(f"/v1/experiments/{experiment_id}/results?view=robustness&format=csv").text)
    )
    assert len(frame) == 6 and frame["experiment_id"].eq(experiment_id).all()


def test_the_robustness_view_is_per_cell_with_factors_and_empty_without_an_evaluation_block(
    client: TestClient, db: Session
) -> None:
    experiment_id = _measured_grid(client, db, factors={"training.lr": [0.001, 0.01]})
    rows = client.get(f"/v1/experiments/{experiment_id}/results", params={"view": "robustness"}).json()
    assert len(rows) == 12
    assert {(row["cell"], row["training.lr"]) for row in rows} == {("lr=0.001", "0.001"), ("lr=0.01", "0.01")}
    assert {row["n"] for row in rows} == {6}
    plain = client.post("/v1/experiments", json=small_spec()).json()["id"]
    assert client.get(f"/v1/experiments/{plain}/results", params={"view": "robustness"}).json() == []


def test_archives_carry_the_robustness_rows(client: TestClient, db: Session) -> None:
    import zipfile

    experiment_id = _measured_grid(client, db, factors={"training.lr": [0.001, 0.01]})
    archive = client.get(f"/v1/experiments/{experiment_id}/export").content
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        member = pd.read_csv(opened.open("robustness.csv"))
        assert len(member) == 72 and {"run_id", "kind", "strength", "accuracy", "spec_hash"} <= set(member.columns)
        members = {name: opened.read(name) for name in opened.namelist()}
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    assert response.json()["robustness"] == 72
    imported = response.json()["id"]

    def table(identifier: str, path: str, **params: str) -> list[dict[str, Any]]:
        rows = client.get(f"/v1/experiments/{identifier}/{path}", params=params).json()
        # The new experiment's own ids, status and timestamps aside, everything must be the same.
        dropped = ("run_id", "run_ids", *TRACE_COLUMNS)
        return [{key: value for key, value in row.items() if key not in dropped} for row in rows]

    assert table(imported, "robustness") == table(experiment_id, "robustness")
    assert table(imported, "results", view="robustness") == table(experiment_id, "results", view="robustness")

    frame = pd.read_csv(io.BytesIO(members["robustness.csv"]))
    frame.loc[3, "kind"] = "cw"
    damaged = io.BytesIO()
    with zipfile.ZipFile(damaged, "w") as target:
        for name, content in {**members, "robustness.csv": frame.to_csv(index=False).encode()}.items():
            target.writestr(name, content)
    refused = client.post(
        "/v1/experiments/import", content=damaged.getvalue(), headers={"Content-Type": "application/zip"}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == "archive.robustness.csv.kind"
    assert "row 4: 'cw' must be one of noise, fgsm, pgd" in refused.json()["detail"][0]["msg"]


def test_the_robustness_plot_draws_a_line_per_activation_and_kind_in_its_colour(
    client: TestClient, db: Session
) -> None:
    from matplotlib.colors import to_hex

    from app.results import service
    from app.results.colours import colour_of
    from app.results.robustness_plots import robustness_figure
    from app.results.statistics import ResultOptions

    experiment_id = _measured_grid(client, db)
    tables = service.load_tables(session=db, experiment_id=uuid.UUID(experiment_id))
    figure = robustness_figure(service.robustness_table(tables=tables, options=ResultOptions()), chance=0.1)
    noise, fgsm = figure.axes[:2]
    assert (noise.get_xlabel(), fgsm.get_xlabel()) == (
        "noise standard deviation (standardised units)",
        "FGSM epsilon (standardised units)",
    )
    lines = {line.get_label(): line for line in fgsm.get_lines()}
    assert list(lines.get("relu").get_xdata()) == [0.0, 0.1]
    assert to_hex(lines["tanh"].get_color()) == to_hex(colour_of("tanh"))
    assert len(fgsm.collections) == 2, "one seed band per activation"

    for image_format, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        response = client.get(f"/v1/experiments/{experiment_id}/plots/robustness.{image_format}")
        assert response.status_code == 200 and response.content.startswith(magic)


def test_the_report_shows_robustness_only_for_an_experiment_with_an_evaluation_block(
    client: TestClient, db: Session
) -> None:
    experiment_id = _measured_grid(client, db)
    page = client.get(f"/experiments/{experiment_id}").text
    assert 'id="robustness-table"' in page and 'id="robustness-plot"' in page
    assert f"/v1/experiments/{experiment_id}/plots/robustness.png" in page
    assert "verdict-better" in page and "verdict-worse" in page
    plain = client.post("/v1/experiments", json=small_spec()).json()["id"]
    page = client.get(f"/experiments/{plain}").text
    assert 'id="robustness"' not in page and "plots/robustness" not in page
    waiting = client.post("/v1/experiments", json=small_spec(version=2, evaluation=EVALUATION)).json()["id"]
    page = client.get(f"/experiments/{waiting}").text
    assert 'id="robustness-table"' in page and "No run has been tested yet" in page
    assert 'id="robustness-plot"' not in page
