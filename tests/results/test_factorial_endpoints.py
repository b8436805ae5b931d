"""Results of a factorial experiment through the HTTP API: per-cell tables, ranking, effects, plots, advice."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.cli.results import print_results
from tests.cli.test_results import _forwarding, build_parser
from tests.results.synthetic_factorial import insert_factorial_experiment

CELLS = [
    "hidden=16, lr=0.001",
    "hidden=16, lr=0.01",
    "hidden=4x16, lr=0.001",
    "hidden=4x16, lr=0.01",
]


@pytest.fixture
def factorial_experiment(db: Session) -> uuid.UUID:
    return insert_factorial_experiment(db)


def test_summary_is_one_row_per_cell_and_activation_with_its_levels(
    client: TestClient, factorial_experiment: uuid.UUID
) -> None:
    rows = client.get(f"/v1/experiments/{factorial_experiment}/results").json()
    assert [(row["cell"], row["activation"]) for row in rows] == [
        (cell, label) for cell in CELLS for label in ("relu", "tanh", "sigmoid")
    ]
    deep = [row for row in rows if row["cell"].startswith("hidden=4x16")]
    assert all(row["model.hidden"] == "[16,16,16,16]" for row in deep)
    assert {row["training.lr"] for row in rows} == {"0.001", "0.01"}
    # Statistics are computed inside the cell: 4 seeds each, sigmoid last only where the net is deep.
    assert {row["n"] for row in rows} == {4}
    assert {row["activation"] for row in deep if row["rank"] == 3} == {"sigmoid"}
    assert all(row["verdict"] == "worse" for row in deep if row["activation"] == "sigmoid")


def test_pairs_and_runs_are_per_cell(client: TestClient, factorial_experiment: uuid.UUID) -> None:
    pairs = client.get(f"/v1/experiments/{factorial_experiment}/results", params={"view": "pairs"}).json()
    assert len(pairs) == 4 * 3 * 2
    assert {row["cell"] for row in pairs} == set(CELLS)
    runs = client.get(f"/v1/experiments/{factorial_experiment}/results", params={"view": "runs"}).json()
    assert len(runs) == 4 * 3 * 4
    assert len({row["run_id"] for row in runs}) == len(runs)


def test_ranking_gives_mean_ranks_over_the_cells_and_the_friedman_test(
    client: TestClient, factorial_experiment: uuid.UUID
) -> None:
    response = client.get(f"/v1/experiments/{factorial_experiment}/results", params={"view": "ranking"})
    assert response.status_code == 200
    rows = response.json()
    assert [row["activation"] for row in rows] == ["relu", "tanh", "sigmoid"]
    assert [row["mean_rank"] for row in rows] == [1.0, 2.0, 3.0]
    relu = rows[0]
    assert relu["status"] == "ok"
    assert relu["test"] == "friedman"
    assert relu["cells"] == CELLS
    assert relu["cell_ranks"] == dict.fromkeys(CELLS, 1.0)
    assert relu["mean_rank_by_level"]["model.hidden"] == {"[16]": 1.0, "[16,16,16,16]": 1.0}
    assert rows[2]["mean_rank_by_level"]["training.lr"] == {"0.001": 3.0, "0.01": 3.0}
    assert relu["critical_difference"] > 0
    assert set(relu["nemenyi_p"]) == {"tanh", "sigmoid"}
    assert relu["metric"] == "test_accuracy"
    assert (
        relu["pairing"] == "seeds pair activations within and across cells: a seed fixes the data order in every cell"
    )

    as_csv = client.get(f"/v1/experiments/{factorial_experiment}/results", params={"view": "ranking", "format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["activation"] for row in table] == ["relu", "tanh", "sigmoid"]
    assert "results-ranking.csv" in as_csv.headers["content-disposition"]


def test_effects_give_means_per_level_and_the_interaction(client: TestClient, factorial_experiment: uuid.UUID) -> None:
    rows = client.get(f"/v1/experiments/{factorial_experiment}/results", params={"view": "effects"}).json()
    assert {row["factor"] for row in rows} == {"model.hidden", "training.lr"}
    depth = [row for row in rows if row["factor"] == "model.hidden"]
    assert [(row["level"], row["activation"]) for row in depth] == [
        (level, label) for level in ("[16]", "[16,16,16,16]") for label in ("relu", "tanh", "sigmoid")
    ]
    sigmoid = {row["level"]: row["mean"] for row in depth if row["activation"] == "sigmoid"}
    assert sigmoid["[16]"] > 0.7 > 0.2 > sigmoid["[16,16,16,16]"]
    assert all(row["status"] == "ok" for row in depth)
    # Sigmoid alone collapses with depth: the activation x depth interaction is large and significant.
    assert depth[0]["interaction_p_value"] < 0.001
    assert depth[0]["interaction_partial_eta_squared"] > 0.9


@pytest.mark.parametrize("kind", ["critical-difference", "interaction"])
def test_factorial_plots_render(client: TestClient, factorial_experiment: uuid.UUID, kind: str) -> None:
    png = client.get(f"/v1/experiments/{factorial_experiment}/plots/{kind}.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = client.get(f"/v1/experiments/{factorial_experiment}/plots/{kind}.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg.content


def test_recommendation_leads_with_how_to_choose_per_condition(
    client: TestClient, factorial_experiment: uuid.UUID
) -> None:
    body = client.get(f"/v1/experiments/{factorial_experiment}/recommendation").json()
    sentences = body["sentences"]
    assert sentences[0].startswith("In cell hidden=16, lr=0.001, relu is best")
    assert any("model.hidden" in sentence for sentence in sentences[: len(CELLS) + 3])
    assert any("measured cells only" in sentence for sentence in sentences)
    assert body["best_choices"] == ["relu"]
    assert "sigmoid" in body["not_trained"]


def test_one_cell_experiment_answers_insufficient(client: TestClient, finished_experiment: uuid.UUID) -> None:
    for view in ("ranking", "effects"):
        response = client.get(f"/v1/experiments/{finished_experiment}/results", params={"view": view})
        assert response.status_code == 200
        rows = response.json()
        assert rows
        assert {row["status"] for row in rows} == {"insufficient"}
        assert "one cell" in rows[0]["reason"]
    summary = client.get(f"/v1/experiments/{finished_experiment}/results").json()
    assert "cell" not in summary[0]
    png = client.get(f"/v1/experiments/{finished_experiment}/plots/critical-difference.png")
    assert png.status_code == 200
    assert png.content.startswith(b"\x89PNG")


def test_unknown_plot_kind_names_the_factorial_kinds(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/plots/nope.png")
    assert response.status_code == 422
    assert "critical-difference" in response.text
    assert "interaction" in response.text


def test_unknown_view_names_ranking_and_effects(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/results", params={"view": "cells"})
    assert response.status_code == 422
    assert "ranking" in response.text
    assert "effects" in response.text


def _cli(client: TestClient, *arguments: str) -> str:
    parsed = build_parser().parse_args(["results", *arguments, "--url", "http://service"])
    output = io.StringIO()
    print_results(parsed, output=output, transport=_forwarding(client))
    return output.getvalue()


def test_cli_prints_the_ranking_and_the_effects(client: TestClient, factorial_experiment: uuid.UUID) -> None:
    ranking = _cli(client, str(factorial_experiment), "--view", "ranking").splitlines()
    assert ranking[0].startswith("test_accuracy (final) over 4 cells: friedman statistic ")
    assert [line.split()[1] for line in ranking[3:]] == ["relu", "tanh", "sigmoid"]
    effects = _cli(client, str(factorial_experiment), "--view", "effects")
    assert "activation x model.hidden: p = " in effects
    assert any(line.split()[:2] == ["[16,16,16,16]", "sigmoid"] for line in effects.splitlines())
    summary = _cli(client, str(factorial_experiment))
    assert summary.startswith("cell hidden=16, lr=0.001\n")
    assert summary.count("baseline relu") == 4


def test_cli_says_a_one_cell_ranking_is_insufficient(client: TestClient, finished_experiment: uuid.UUID) -> None:
    assert _cli(client, str(finished_experiment), "--view", "ranking").startswith("ranking insufficient: ")


def test_report_shows_the_cells_the_ranking_and_the_across_cell_plots(
    client: TestClient, factorial_experiment: uuid.UUID
) -> None:
    page = client.get(f"/experiments/{factorial_experiment}")
    assert page.status_code == 200
    html = page.text
    assert '<h2 id="factorial">Across cells</h2>' in html
    assert 'id="cells-table"' in html and 'id="ranking-table"' in html
    assert all(cell in html for cell in CELLS)
    assert "Friedman chi-square" in html
    assert f"/v1/experiments/{factorial_experiment}/plots/critical-difference.png" in html
    assert f"/v1/experiments/{factorial_experiment}/plots/interaction.png" in html
    assert 'id="pairs-table"' not in html  # pairs are per cell: the ranking relates the cells instead
    assert "In cell hidden=16, lr=0.001, relu is best" in html
    runs = html.split('id="runs-table"')[1].split("</table>")[0]
    assert runs.count("<tr>") == 1 + 4 * 3 * 4
    assert '<th class="text">cell</th>' in runs
    assert runs.count(">hidden=4x16, lr=0.01</td>") == 3 * 4


def test_report_of_a_one_cell_experiment_has_no_factorial_section(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    html = client.get(f"/experiments/{finished_experiment}").text
    assert 'id="factorial"' not in html
    assert 'id="pairs-table"' in html


def test_diagnostics_are_per_cell(client: TestClient, factorial_experiment: uuid.UUID) -> None:
    rows = client.get(f"/v1/experiments/{factorial_experiment}/diagnostics").json()
    assert [(row["cell"], row["activation"]) for row in rows] == [
        (cell, label) for cell in CELLS for label in ("relu", "tanh", "sigmoid")
    ]


def test_a_cell_where_an_activation_failed_is_left_out_of_the_ranking(client: TestClient, db: Session) -> None:
    experiment_id = insert_factorial_experiment(
        db, failed=lambda levels, label: label == "sigmoid" and levels == {"model.hidden": [16], "training.lr": 0.01}
    )
    rows = client.get(f"/v1/experiments/{experiment_id}/results", params={"view": "ranking"}).json()
    assert rows[0]["status"] == "ok"
    assert rows[0]["excluded_cells"] == ["hidden=16, lr=0.01"]
    assert rows[0]["cells"] == [cell for cell in CELLS if cell != "hidden=16, lr=0.01"]
    summary = client.get(f"/v1/experiments/{experiment_id}/results").json()
    failed = next(row for row in summary if row["cell"] == "hidden=16, lr=0.01" and row["activation"] == "sigmoid")
    assert (failed["n"], failed["failed"]) == (0, 4)
    body = client.get(f"/v1/experiments/{experiment_id}/recommendation").json()
    assert "In cell hidden=16, lr=0.01: Runs left out of the statistics: 4 failed." in body["sentences"]
