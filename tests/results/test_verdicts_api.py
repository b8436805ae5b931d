"""Verdicts over HTTP (issue 11): the equivalence margin as a query parameter and a setting, the new columns,
and the recommendation's failures, best choices and correction."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.config import Settings
from app.main import create_app
from tests.results.conftest import insert_experiment
from tests.results.synthetic import SyntheticArm

NEW_COLUMNS = (
    "difference_sd",
    "probability_outperforms",
    "equivalence_margin",
    "equivalence_ci_low",
    "equivalence_ci_high",
    "p_equivalence",
    "p_equivalence_holm",
    "correction",
    "seeds_needed",
    "seeds_needed_equivalence",
)


def _frame(client: TestClient, experiment_id: uuid.UUID, **params: Any) -> pd.DataFrame:
    response = client.get(f"/v1/experiments/{experiment_id}/results", params=params)
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json())


def _row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame[frame["activation"] == label].iloc[0]


def test_both_views_carry_effect_sizes_seeds_needed_and_their_correction(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    summary = _frame(client, finished_experiment)
    pairs = _frame(client, finished_experiment, view="pairs")
    for frame in (summary, pairs):
        assert set(NEW_COLUMNS) <= set(frame.columns)
    assert set(summary["correction"].dropna()) == {"Holm over the 3 comparisons with the baseline relu"}
    assert set(pairs["correction"]) == {"Holm over all 6 pairs"}
    assert set(summary["verdict"]) <= {"baseline", "better", "worse", "equivalent", "inconclusive", "insufficient"}
    sigmoid = _row(summary, "sigmoid")
    assert sigmoid["verdict"] == "worse" and sigmoid["probability_outperforms"] == 0.0
    assert set(_frame(client, finished_experiment, view="runs")["summary"]) == {"final"}


def test_equivalence_margin_is_a_query_parameter_and_bad_values_name_it(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    default = _frame(client, finished_experiment)
    assert set(default["equivalence_margin"].dropna()) == {0.01}
    wide = _frame(client, finished_experiment, equivalence_margin=0.5)
    assert set(wide["equivalence_margin"].dropna()) == {0.5}
    losses = _frame(client, finished_experiment, metric="test_loss")
    assert losses["equivalence_margin"].isna().all() and losses["p_equivalence"].isna().all()
    given = _frame(client, finished_experiment, metric="test_loss", equivalence_margin=0.05)
    assert set(given["equivalence_margin"].dropna()) == {0.05}
    response = client.get(f"/v1/experiments/{finished_experiment}/results", params={"equivalence_margin": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == "query.equivalence_margin"


def test_the_setting_sets_the_default_margin(settings: Settings, finished_experiment: uuid.UUID) -> None:
    configured = settings.model_copy(update={"equivalence_margin": 0.03})
    with TestClient(create_app(configured)) as client:
        frame = _frame(client, finished_experiment)
    assert set(frame["equivalence_margin"].dropna()) == {0.03}


def test_recommendation_reports_failures_first_and_the_best_choices(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/recommendation")
    assert response.status_code == 200
    body = response.json()
    assert body["not_trained"] == ["sigmoid"]
    assert body["correction"] == "Holm over all 6 pairs"
    assert body["equivalence_margin"] == 0.01
    assert "sigmoid" not in body["best_choices"]
    assert body["sentences"][0].startswith("sigmoid failed to train")
    assert body["sentences"][1].startswith("Remedies the service can run next for sigmoid")
    assert not any("tied" in sentence for sentence in body["sentences"])


def test_an_experiment_where_nothing_trained_ranks_none(client: TestClient, db: Session) -> None:
    vanishing = (1e-7, 1e-4, 1.0)
    arms = [
        SyntheticArm("relu", "relu", 0.1, noise=0.002, gradient_profile=vanishing),
        SyntheticArm("sigmoid", "sigmoid", 0.1, noise=0.002, gradient_profile=vanishing),
        SyntheticArm("prelu", "prelu", 0.1, noise=0.002, gradient_profile=vanishing),
        SyntheticArm("swish_b", "custom", 0.1, noise=0.002, gradient_profile=vanishing),
    ]
    experiment_id = insert_experiment(db, arms=arms)
    body = client.get(f"/v1/experiments/{experiment_id}/recommendation").json()
    assert body["best_choices"] == []
    assert body["not_trained"] == ["relu", "sigmoid", "prelu", "swish_b"]
    failures = [sentence for sentence in body["sentences"] if "failed to train" in sentence]
    assert body["sentences"][: len(failures)] == failures and len(failures) == 4
    assert "No activation trained, so none is ranked." in body["sentences"]
    assert not any("ranks first" in sentence for sentence in body["sentences"])


@pytest.mark.parametrize("path", ["results", "recommendation"])
def test_alpha_still_reaches_the_statistics(client: TestClient, finished_experiment: uuid.UUID, path: str) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/{path}", params={"alpha": 0.2})
    assert response.status_code == 200
    if path == "recommendation":
        assert response.json()["alpha"] == 0.2
