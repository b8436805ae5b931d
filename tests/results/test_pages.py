"""The dashboard's columns and filters, the comparison page and the activation galleries, as HTML."""

from __future__ import annotations

import html
import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.catalog import ACTIVATIONS
from app.reports.dashboard import best_activations
from app.reports.repository import FinalMean
from tests.results.conftest import FAKE_SPEC, insert_experiment
from tests.results.synthetic_factorial import FACTORIAL_SPEC, insert_factorial_experiment


def _dashboard_rows(client: TestClient, **params: str) -> dict[str, dict[str, str]]:
    """Each listed experiment's cells by their class, keyed by the experiment id."""
    response = client.get("/", params=params)
    assert response.status_code == 200, response.text
    rows = {}
    for experiment_id, body in re.findall(r'<tr data-experiment="([^"]+)">(.*?)</tr>', response.text, re.DOTALL):
        cells = dict(re.findall(r'<td class="(?:text )?([a-z-]+)"[^>]*>(.*?)</td>', body, re.DOTALL))
        rows[experiment_id] = {name: value.strip() for name, value in cells.items()}
    return rows


def test_the_dashboard_shows_dataset_model_cells_and_the_best_activation(client: TestClient, db: Session) -> None:
    plain = insert_experiment(db)
    factorial = insert_factorial_experiment(db)
    rows = _dashboard_rows(client)
    assert rows[str(plain)]["dataset"] == "digits"
    assert rows[str(plain)]["model"] == "MLP, hidden [16, 16], norm none"
    # prelu (0.91) beats swish_b (0.905) and relu (0.90); sigmoid's few succeeded runs sit near chance.
    assert rows[str(plain)]["best"] == "prelu"
    assert float(rows[str(plain)]["best-value"]) == pytest.approx(0.91, abs=0.01)
    assert rows[str(plain)]["cells"] == "1"
    # relu is best in every cell of the 2 x 2 design: mean rank 1.
    assert rows[str(factorial)]["cells"] == "4"
    assert rows[str(factorial)]["best"] == "relu"
    assert "varied: model.hidden" in rows[str(factorial)]["model"]
    page = client.get("/").text
    assert f'name="experiments" value="{plain}"' in page and 'action="/compare"' in page


def test_the_dashboard_filters_by_status_name_and_dataset(client: TestClient, db: Session) -> None:
    digits = insert_experiment(db, spec_payload={**FAKE_SPEC, "name": "Digits run"})
    spirals = insert_experiment(
        db, spec_payload={**FAKE_SPEC, "name": "spirals run", "dataset": {"name": "spirals"}}, status="succeeded"
    )
    assert set(_dashboard_rows(client, dataset="spirals")) == {str(spirals)}
    assert set(_dashboard_rows(client, status="partial")) == {str(digits)}
    assert set(_dashboard_rows(client, name="DIGITS")) == {str(digits)}
    assert set(_dashboard_rows(client, name="run", dataset="", status="")) == {str(digits), str(spirals)}
    assert "No experiments match the filters" in client.get("/", params={"name": "nothing like it"}).text
    for name, value in (("status", "done"), ("dataset", "imagenet")):
        response = client.get("/", params={name: value})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == f"query.{name}" and "one of" in response.text


def test_the_dataset_filter_matches_any_level_of_a_dataset_name_factor_in_the_dashboard_and_the_api(
    client: TestClient, db: Session
) -> None:
    digits = insert_experiment(db, spec_payload={**FAKE_SPEC, "name": "digits only"})
    spirals = insert_experiment(db, spec_payload={**FAKE_SPEC, "name": "spirals only", "dataset": {"name": "spirals"}})
    factors = {**FACTORIAL_SPEC["factors"], "dataset.name": ["spirals", "mnist1d"]}
    varied = insert_factorial_experiment(db, spec_payload={**FACTORIAL_SPEC, "name": "varied", "factors": factors})

    def listed(dataset: str) -> set[str]:
        response = client.get("/v1/experiments", params={"dataset": dataset})
        assert response.status_code == 200, response.text
        assert response.json()["total"] == len(response.json()["items"])
        return {item["id"] for item in response.json()["items"]}

    assert listed("spirals") == set(_dashboard_rows(client, dataset="spirals")) == {str(spirals), str(varied)}
    assert listed("mnist1d") == set(_dashboard_rows(client, dataset="mnist1d")) == {str(varied)}
    # The factor's levels replace the base spec's dataset (digits) in every cell: no cell trains on digits.
    assert listed("digits") == set(_dashboard_rows(client, dataset="digits")) == {str(digits)}
    assert listed("mnist_5k") == set() and "No experiments match the filters" in client.get("/?dataset=mnist_5k").text
    for bad in ("imagenet", "spiral", '"spirals"', "%"):
        response = client.get("/v1/experiments", params={"dataset": bad})
        assert response.status_code == 422, bad
        [error] = response.json()["detail"]
        assert error["loc"] == "query.dataset" and "one of digits" in error["msg"] and repr(bad) in error["msg"]


def test_best_activation_ranks_within_cells_and_averages_over_them() -> None:
    experiment = uuid.uuid4()

    def final(cell: int, label: str, mean: float) -> FinalMean:
        return FinalMean(experiment_id=experiment, cell_index=cell, activation=label, mean=mean, runs=3)

    # tanh has the highest mean over the cells (its one big win), relu the better rank in two of three cells.
    finals = [
        final(0, "relu", 0.80),
        final(0, "tanh", 0.70),
        final(1, "relu", 0.80),
        final(1, "tanh", 0.79),
        final(2, "relu", 0.20),
        final(2, "tanh", 0.90),
    ]
    best = best_activations(finals)[experiment]
    assert best.label == "relu" and best.cells == 3 and best.mean_rank == pytest.approx(4 / 3)
    assert best.value == pytest.approx(0.6)


def test_the_comparison_page_tabulates_the_differences(client: TestClient, db: Session) -> None:
    first = insert_experiment(db, spec_payload={**FAKE_SPEC, "name": "first"})
    second = insert_experiment(db, spec_payload={**FAKE_SPEC, "name": "second"})
    response = client.get("/compare", params=[("experiments", str(first)), ("experiments", str(second))])
    assert response.status_code == 200, response.text
    table = re.search(r'<table id="compare-table">(.*?)</table>', response.text, re.DOTALL)
    assert table is not None
    rows = re.findall(r'<tr class="(reference|compared)">(.*?)</tr>', table.group(1), re.DOTALL)
    assert [kind for kind, _ in rows] == ["reference", "compared"] * 4
    assert "Holm over the" in response.text and "/v1/compare/plots/learning-curves.png?experiments=" in response.text
    spirals = insert_experiment(db, spec_payload={**FAKE_SPEC, "dataset": {"name": "spirals"}})
    mismatch = client.get("/compare", params={"experiments": f"{first},{spirals}"})
    assert mismatch.status_code == 422 and "differ in their dataset" in mismatch.text


def test_the_report_links_its_gallery_which_lists_every_activation(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    report = client.get(f"/experiments/{finished_experiment}").text
    assert f'href="/experiments/{finished_experiment}/gallery"' in report
    page = client.get(f"/experiments/{finished_experiment}/gallery").text
    sections = _sections(page)
    assert [section["label"] for section in sections] == ["relu", "sigmoid", "prelu", "swish_b"]
    by_label = {section["label"]: section for section in sections}
    assert "x * sigmoid(beta * x)" in by_label["swish_b"]["body"]
    assert "learned from</dt><dd>beta = 1" in by_label["swish_b"]["body"]
    # The synthetic prelu learned slope 0.12 in each layer.
    assert "learned, " in by_label["prelu"]["body"] and "slope = 0.12" in by_label["prelu"]["body"]
    assert "plots/activations.svg?activation=swish_b" in by_label["swish_b"]["body"]
    single = client.get(f"/v1/experiments/{finished_experiment}/plots/activations.svg", params={"activation": "relu"})
    assert single.status_code == 200 and single.headers["content-type"].startswith("image/svg+xml")
    unknown = client.get(f"/v1/experiments/{finished_experiment}/plots/activations.svg", params={"activation": "nope"})
    assert unknown.status_code == 422 and "query.activation" in unknown.text and "swish_b" in unknown.text
    other = client.get(
        f"/v1/experiments/{finished_experiment}/plots/learning-curves.svg", params={"activation": "relu"}
    )
    assert other.status_code == 422 and "query.activation" in other.text


def test_the_catalog_gallery_has_every_activation_with_notes_for_input_conditioned_ones(client: TestClient) -> None:
    response = client.get("/catalog/activations")
    assert response.status_code == 200
    sections = {section["label"]: section for section in _sections(response.text)}
    assert set(sections) == {name if name != "custom" else "custom(x * tanh(x))" for name in ACTIVATIONS}
    for name, info in ACTIVATIONS.items():
        if info.input_conditioned:
            assert "drawn at a fixed context" in sections[name]["body"], name
        if name != "custom":
            assert f'<code class="formula">{html.escape(info.formula)}</code>' in sections[name]["body"], name
    assert '<code class="formula">x * tanh(x)</code>' in sections["custom(x * tanh(x))"]["body"]
    assert 'src="/v1/catalog/activations/custom/plot.svg?expression=x+%2A+tanh%28x%29"' in response.text


def _sections(page: str) -> list[dict[str, Any]]:
    return [
        {"label": label, "body": body}
        for label, body in re.findall(
            r'<section class="activation"[^>]*data-activation="([^"]+)">(.*?)</section>', page, re.DOTALL
        )
    ]
