"""The results endpoints over HTTP on SQLite, against a fake finished experiment stored through the ORM."""

from __future__ import annotations

import io
import json
import re
import uuid
import xml.etree.ElementTree as ElementTree
from typing import Any

import matplotlib.image
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, Run
from app.reports.service import PLOT_CAPTIONS
from app.results.plots import PLOT_KINDS
from app.results.statistics import ResultOptions


def _read(content: bytes, output_format: str) -> pd.DataFrame:
    if output_format == "json":
        return pd.DataFrame(json.loads(content))
    if output_format == "csv":
        return pd.read_csv(io.BytesIO(content))
    return pd.read_parquet(io.BytesIO(content))


def _results(client: TestClient, experiment_id: uuid.UUID, **params: Any) -> pd.DataFrame:
    output_format = params.pop("format", "json")
    response = client.get(f"/v1/experiments/{experiment_id}/results", params={"format": output_format, **params})
    assert response.status_code == 200, response.text
    return _read(response.content, output_format)


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def test_results_summarise_each_activation_and_count_unsuccessful_runs(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    frame = _results(client, finished_experiment)
    assert list(frame["activation"]) == ["relu", "sigmoid", "prelu", "swish_b"]
    sigmoid = _row(frame, "sigmoid")
    assert (sigmoid["runs"], sigmoid["succeeded"], sigmoid["diverged"], sigmoid["failed"], sigmoid["cancelled"]) == (
        6,
        3,
        1,
        1,
        1,
    )
    assert sigmoid["n"] == 3
    assert sigmoid["seeds"] == "3;4;5"
    assert sigmoid["verdict"] == "worse"
    assert set(frame["baseline"]) == {"relu"}
    assert _row(frame, "relu")["verdict"] == "baseline"
    assert _row(frame, "relu")["n"] == 6
    assert sigmoid["rank"] == 4.0
    stored = db.scalars(
        select(EpochMetric.test_accuracy)
        .join(Run, EpochMetric.run_id == Run.id)
        .where(Run.experiment_id == finished_experiment, Run.activation_label == "relu", EpochMetric.epoch == 4)
    ).all()
    assert _row(frame, "relu")["mean"] == pytest.approx(sum(stored) / len(stored))


def test_every_row_traces_back_to_its_runs(client: TestClient, finished_experiment: uuid.UUID, db: Session) -> None:
    frame = _results(client, finished_experiment)
    experiment = db.get(Experiment, finished_experiment)
    assert experiment is not None
    assert set(frame["experiment_id"]) == {str(finished_experiment)}
    assert set(frame["spec_hash"]) == {experiment.spec_hash}
    assert frame["experiment_created_at"].notna().all() and frame["runs_finished_at"].notna().all()
    runs = {str(run.id): run for run in db.scalars(select(Run).where(Run.experiment_id == finished_experiment))}
    for row in frame.itertuples(index=False):
        run_ids = str(row.run_ids).split(";")
        assert len(run_ids) == row.n
        assert {runs[run_id].activation_label for run_id in run_ids} == {row.activation}
        assert sorted(runs[run_id].seed for run_id in run_ids) == [int(seed) for seed in str(row.seeds).split(";")]


@pytest.mark.parametrize("view", ["summary", "pairs", "runs"])
def test_every_format_round_trips_through_pandas(client: TestClient, finished_experiment: uuid.UUID, view: str) -> None:
    tables = {
        name: _results(client, finished_experiment, format=name, view=view) for name in ("json", "csv", "parquet")
    }
    reference = tables["json"]
    for name in ("csv", "parquet"):
        other = tables[name]
        assert list(other.columns) == list(reference.columns), name
        assert len(other) == len(reference)
        for column in reference.columns:
            expected = reference[column]
            got = other[column]
            if pd.api.types.is_numeric_dtype(expected) and pd.api.types.is_numeric_dtype(got):
                assert got.to_numpy(dtype=float) == pytest.approx(expected.to_numpy(dtype=float), nan_ok=True), column
            elif column.endswith("_at"):
                assert list(pd.to_datetime(got, utc=True)) == list(pd.to_datetime(expected, utc=True)), column
            else:
                assert [None if pd.isna(value) else str(value) for value in got] == [
                    None if pd.isna(value) else str(value) for value in expected
                ], column


def test_pairs_view_gives_the_outcome_matrix(client: TestClient, finished_experiment: uuid.UUID) -> None:
    pairs = _results(client, finished_experiment, view="pairs")
    assert len(pairs) == 12
    outcomes = pairs.set_index(["activation", "opponent"])["outcome"]
    assert outcomes[("relu", "sigmoid")] == "win"
    assert outcomes[("sigmoid", "relu")] == "loss"
    assert set(outcomes) <= {"win", "loss", "equivalent", "inconclusive", "insufficient"}


def test_options_change_the_statistics(client: TestClient, finished_experiment: uuid.UUID) -> None:
    best = _results(client, finished_experiment, summary="best", metric="test_loss", baseline="prelu", threshold=0.5)
    assert set(best["metric"]) == {"test_loss"}
    assert bool(best["lower_is_better"].iloc[0])
    assert set(best["baseline"]) == {"prelu"}
    assert _row(best, "prelu")["verdict"] == "baseline"
    assert _row(best, "relu")["epochs_to_threshold"] >= 1
    with_diverged = _results(client, finished_experiment, include_diverged="true")
    assert _row(with_diverged, "sigmoid")["n"] == 4


@pytest.mark.parametrize(
    ("params", "location", "fragment"),
    [
        ({"metric": "accuracy"}, "query.metric", "metric must be one of test_accuracy"),
        ({"baseline": "elu"}, "query.baseline", "baseline must be one of relu, sigmoid, prelu, swish_b"),
        ({"format": "xlsx"}, "query.format", "json"),
        ({"summary": "last"}, "query.summary", "final"),
        ({"alpha": "2"}, "query.alpha", "less than 1"),
    ],
)
def test_bad_options_get_422_naming_the_parameter(
    client: TestClient, finished_experiment: uuid.UUID, params: dict[str, str], location: str, fragment: str
) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/results", params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == location
    assert fragment in detail[0]["msg"]


def test_documented_option_defaults_are_the_ones_the_statistics_use(client: TestClient) -> None:
    defaults = ResultOptions()
    operations = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    documented = 0
    for path in ("results", "recommendation", "plots/{filename}"):
        for parameter in operations[f"/v1/experiments/{{experiment_id}}/{path}"]["get"]["parameters"]:
            if parameter["in"] == "query" and hasattr(defaults, parameter["name"]):
                assert parameter["schema"].get("default") == getattr(defaults, parameter["name"]), parameter
                documented += 1
    assert documented == 9 + 6 + 4


def test_unknown_experiment_is_404(client: TestClient) -> None:
    missing = uuid.uuid4()
    for path in ("results", "diagnostics", "recommendation", "plots/final-metric.png", "export", "events"):
        assert client.get(f"/v1/experiments/{missing}/{path}").status_code == 404, path
    assert client.get(f"/experiments/{missing}").status_code == 404


def test_diagnostics_flag_vanishing_gradients_and_report_learned_values(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/diagnostics")
    assert response.status_code == 200
    frame = pd.DataFrame(response.json())
    sigmoid = _row(frame, "sigmoid")
    assert bool(sigmoid["vanishing"])
    assert sigmoid["gradient_ratio_last_epoch"] == pytest.approx(2e-5)
    assert sigmoid["saturated_fraction"] == pytest.approx(0.9)
    assert _row(frame, "prelu")["learned_parameters"] == {"slope": pytest.approx(0.12)}
    assert _row(frame, "relu")["dead_fraction"] == pytest.approx(0.2)
    csv = pd.read_csv(io.BytesIO(client.get(f"/v1/experiments/{finished_experiment}/diagnostics?format=csv").content))
    assert json.loads(_row(csv, "swish_b")["learned_parameters"]) == {"beta": pytest.approx(1.6)}


def test_recommendation_explains_the_failed_activation(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/recommendation")
    assert response.status_code == 200
    body = response.json()
    assert body["best_choices"][0] in ("prelu", "swish_b", "relu")
    failure = next(sentence for sentence in body["sentences"] if sentence.startswith("sigmoid failed to train"))
    assert "diverged in 1 of 6 runs" in failure and "vanishing gradients" in failure
    assert any(sentence.startswith("Cost per epoch") for sentence in body["sentences"])


@pytest.mark.parametrize("kind", sorted(PLOT_KINDS))
def test_plots_are_valid_images(client: TestClient, finished_experiment: uuid.UUID, kind: str) -> None:
    png = client.get(f"/v1/experiments/{finished_experiment}/plots/{kind}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert matplotlib.image.imread(io.BytesIO(png.content), format="png").shape[0] > 100
    svg = client.get(f"/v1/experiments/{finished_experiment}/plots/{kind}.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert ElementTree.fromstring(svg.content).tag == "{http://www.w3.org/2000/svg}svg"


def test_unknown_plot_kind_or_format_is_422(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/plots/histogram.gif")
    assert response.status_code == 422
    messages = " ".join(item["msg"] for item in response.json()["detail"])
    assert "learning-curves" in messages and "png, svg" in messages


def test_the_dashboard_lists_experiments_and_links_their_reports(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert f'href="/experiments/{finished_experiment}"' in response.text
    assert "fake finished grid" in response.text
    assert 'http-equiv="refresh"' not in response.text


def test_the_report_holds_table_verdicts_recommendation_and_loadable_plots(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    response = client.get(f"/experiments/{finished_experiment}")
    assert response.status_code == 200
    page = response.text
    assert 'id="results-table"' in page and "<td" in page
    assert "sigmoid failed to train" in page
    assert "worse" in page and "baseline" in page
    assert 'http-equiv="refresh"' not in page
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == len(PLOT_CAPTIONS)
    for source in sources:
        image = client.get(source.replace("&amp;", "&"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/png", source


def test_the_report_refreshes_while_runs_progress(client: TestClient, db: Session) -> None:
    from tests.results.conftest import insert_experiment

    running = insert_experiment(db, status="running")
    assert 'http-equiv="refresh"' in client.get(f"/experiments/{running}").text
    assert 'http-equiv="refresh"' in client.get("/").text


def test_report_options_are_validated(client: TestClient, finished_experiment: uuid.UUID) -> None:
    assert client.get(f"/experiments/{finished_experiment}?metric=test_loss&summary=best&threshold=").status_code == 200
    response = client.get(f"/experiments/{finished_experiment}?threshold=high")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == "query.threshold"
