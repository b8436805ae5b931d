"""GET /v1/compare: activations aligned across experiments, paired differences, mismatches, owners."""

from __future__ import annotations

import csv
import io
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.auth.service import create_api_key
from app.compare.plots import learning_curves_figure
from app.compare.service import load_experiments
from app.config import Settings
from app.main import create_app
from app.models import Experiment
from app.results.colours import colour_of
from tests.results.conftest import FAKE_ARMS, FAKE_SPEC, insert_experiment
from tests.results.synthetic_factorial import deep_sigmoid_fails, insert_factorial_experiment

# The same arms, relu 3 points better: the synthetic generator's noise is the same in both experiments, so at the
# final epoch every seed differs by exactly 0.03 and the paired test must find it; the other activations are equal.
BETTER_RELU = [replace(FAKE_ARMS[0], final_accuracy=0.93), *FAKE_ARMS[1:]]


@contextmanager
def app_session(client: TestClient) -> Iterator[Session]:
    with client.app.state.session_factory() as session:  # type: ignore[attr-defined]
        yield session


def _spec(**changes: Any) -> dict[str, Any]:
    # Ten seeds: enough for Holm's strictest step over the four comparisons (Wilcoxon's smallest p with 10 is 0.002).
    return {**FAKE_SPEC, "seeds": list(range(10)), **changes}


@pytest.fixture
def two_experiments(db: Session) -> tuple[uuid.UUID, uuid.UUID]:
    first = insert_experiment(db, spec_payload=_spec(name="init default"))
    second = insert_experiment(db, spec_payload=_spec(name="init auto"), arms=BETTER_RELU)
    return first, second


def _rows(client: TestClient, *ids: uuid.UUID, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/compare", params={"experiments": ",".join(map(str, ids)), **params})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def test_activations_align_and_paired_seeds_give_the_results_views_statistics(
    client: TestClient, two_experiments: tuple[uuid.UUID, uuid.UUID]
) -> None:
    first, second = two_experiments
    rows = _rows(client, first, second)
    assert [(row["activation"], row["experiment_name"]) for row in rows] == [
        (label, name) for label in ("relu", "sigmoid", "prelu", "swish_b") for name in ("init default", "init auto")
    ]
    by_key = {(row["activation"], row["experiment_id"]): row for row in rows}
    reference = by_key[("relu", str(first))]
    assert reference["verdict"] == "reference" and reference["mean_difference"] is None
    relu = by_key[("relu", str(second))]
    assert relu["paired_n"] == 10 and relu["paired_seeds"] == ";".join(map(str, range(10)))
    assert relu["mean_difference"] == pytest.approx(0.03, abs=1e-9)
    assert relu["difference_of_means"] == pytest.approx(relu["mean"] - reference["mean"])
    assert relu["test"] == "wilcoxon" and relu["verdict"] == "better"
    assert relu["correction"].startswith("Holm over the ") and "init default" in relu["correction"]
    assert reference["ci_low"] < reference["mean"] < reference["ci_high"]
    prelu = by_key[("prelu", str(second))]
    assert prelu["mean_difference"] == pytest.approx(0.0, abs=1e-12) and prelu["verdict"] != "better"
    # sigmoid did not succeed on seeds 0-2 (diverged, failed, cancelled): the other seven pair.
    assert by_key[("sigmoid", str(second))]["paired_n"] == 7
    assert by_key[("sigmoid", str(first))]["n"] == 7

    csv_response = client.get("/v1/compare", params={"experiments": f"{first},{second}", "format": "csv"})
    assert csv_response.status_code == 200 and csv_response.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert len(table) == len(rows) and {"activation", "experiment_id", "mean_difference", "verdict"} <= set(table[0])


def test_a_seed_that_only_one_experiment_ran_does_not_pair(client: TestClient, db: Session) -> None:
    first = insert_experiment(db, spec_payload=_spec(name="six seeds"))
    fewer = insert_experiment(db, spec_payload=_spec(name="two seeds", seeds=[0, 99]), arms=BETTER_RELU)
    relu = next(
        row for row in _rows(client, first, fewer) if row["experiment_id"] == str(fewer) and row["activation"] == "relu"
    )
    assert relu["n"] == 2 and relu["paired_n"] == 1 and relu["paired_seeds"] == "0"
    assert relu["verdict"] == "insufficient" and relu["difference_of_means"] is not None


@pytest.mark.parametrize(
    ("experiments", "message"),
    [
        ("not-a-uuid,also-not", "is not one"),
        ("{a}", "at least 2"),
        ("{a},{a}", "named more than once"),
        ("{a},{b},{c}", "at most 2 experiments (setting ACTLAB_MAX_COMPARE_EXPERIMENTS)"),
    ],
)
def test_bad_lists_of_ids_are_422s_naming_experiments(
    settings: Settings, db: Session, experiments: str, message: str
) -> None:
    ids = [insert_experiment(db) for _ in range(3)]
    client = TestClient(create_app(settings.model_copy(update={"max_compare_experiments": 2})))
    text = experiments.format(a=ids[0], b=ids[1], c=ids[2])
    response = client.get("/v1/compare", params={"experiments": text})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == "query.experiments" and message in error["msg"], error


def test_unknown_experiment_is_404(client: TestClient, finished_experiment: uuid.UUID) -> None:
    missing = uuid.uuid4()
    response = client.get("/v1/compare", params={"experiments": f"{finished_experiment},{missing}"})
    assert response.status_code == 404 and str(missing) in response.text


def test_different_datasets_or_a_metric_one_did_not_record_are_422s_saying_which(
    client: TestClient, db: Session, finished_experiment: uuid.UUID
) -> None:
    spirals = insert_experiment(db, spec_payload=_spec(name="on spirals", dataset={"name": "spirals"}))
    response = client.get("/v1/compare", params={"experiments": f"{finished_experiment},{spirals}"})
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == "query.experiments" and error["type"] == "dataset_mismatch"
    assert (
        "differ in their dataset" in error["msg"] and "uses digits" in error["msg"] and "uses spirals" in error["msg"]
    )
    assert "on spirals" in error["msg"]

    other = insert_experiment(db, spec_payload=_spec(name="again"))
    response = client.get(
        "/v1/compare", params={"experiments": f"{finished_experiment},{other}", "metric": "val_accuracy"}
    )
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == "query.metric" and "val_accuracy was not recorded" in error["msg"]


def test_each_key_compares_only_its_own_experiments(settings: Settings, db: Session) -> None:
    app = create_app(settings.model_copy(update={"auth_required": True}))
    with TestClient(app) as client, app.state.session_factory() as session:
        alice = create_api_key(session=session, name="alice")
        bob = create_api_key(session=session, name="bob")
        mine, also_mine, theirs = (insert_experiment(session) for _ in range(3))
        for experiment_id, owner in ((mine, alice), (also_mine, alice), (theirs, bob)):
            session.execute(update(Experiment).where(Experiment.id == experiment_id).values(owner_id=owner.id))
        session.commit()
        headers = {"Authorization": f"Bearer {alice.key}"}
        assert (
            client.get("/v1/compare", params={"experiments": f"{mine},{also_mine}"}, headers=headers).status_code == 200
        )
        stolen = client.get("/v1/compare", params={"experiments": f"{mine},{theirs}"}, headers=headers)
        assert stolen.status_code == 404 and str(theirs) in stolen.text
        assert client.get("/v1/compare", params={"experiments": f"{mine},{also_mine}"}).status_code == 401
        plot = client.get(
            "/v1/compare/plots/learning-curves.svg", params={"experiments": f"{theirs},{mine}"}, headers=headers
        )
        assert plot.status_code == 404


def test_the_overlaid_curves_plot(client: TestClient, two_experiments: tuple[uuid.UUID, uuid.UUID]) -> None:
    first, second = two_experiments
    params = {"experiments": f"{first},{second}"}
    png = client.get("/v1/compare/plots/learning-curves.png", params=params)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    svg = client.get("/v1/compare/plots/learning-curves.svg", params=params)
    assert svg.status_code == 200 and ElementTree.fromstring(svg.content).tag.endswith("svg")
    bad = client.get("/v1/compare/plots/nope.png", params=params)
    assert bad.status_code == 422 and "learning-curves.png" in bad.text

    with app_session(client) as session:
        experiments = load_experiments(session=session, experiment_ids=[first, second])
    figure = learning_curves_figure(experiments, metric="test_accuracy")
    relu_lines = [line for line in figure.axes[0].get_lines() if line.get_color() == colour_of("relu")]
    assert len(relu_lines) == 2
    assert relu_lines[0].get_linestyle() != relu_lines[1].get_linestyle()
    chance = [line for line in figure.axes[0].get_lines() if line.get_label() == "chance"]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(0.1)
    legends = [[text.get_text() for text in legend.get_texts()] for legend in figure.legends]
    assert ["init default", "init auto"] in legends and ["relu", "sigmoid", "prelu", "swish_b"] in legends


def test_factorial_experiments_align_by_cell_and_activation(client: TestClient, db: Session) -> None:
    first = insert_factorial_experiment(db)
    second = insert_factorial_experiment(db, accuracy=lambda levels, label: deep_sigmoid_fails(levels, label) + 0.01)
    rows = _rows(client, first, second)
    assert len(rows) == 2 * 4 * 3  # experiments x cells x activations
    cells = {row["cell"] for row in rows}
    assert len(cells) == 4 and all("hidden=" in cell for cell in cells)
    compared = [row for row in rows if row["experiment_id"] == str(second)]
    assert all(row["paired_n"] == 4 for row in compared)
    assert all(row["mean_difference"] == pytest.approx(0.01, abs=1e-6) for row in compared)
    assert compared[0]["correction"].startswith("Holm over the 12 comparisons")
