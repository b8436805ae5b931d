"""The report page states each view's summary and correction and colours the pairwise outcomes (issue 11)."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient


def test_the_report_states_the_summary_and_the_correction_of_each_view(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    response = client.get(f"/experiments/{finished_experiment}", params={"summary": "mean_last_k", "k": 2})
    assert response.status_code == 200
    page = response.text
    assert "(summary: mean_last_2)" in page
    assert '<span id="results-correction">Holm over the 3 comparisons with the baseline relu</span>' in page
    assert '<span id="pairs-correction">Holm over all 6 pairs</span>' in page
    assert "P(beats baseline on a seed)" in page and "seeds needed" in page
    assert 'class="text outcome-win" title="difference ' in page
    assert " tie" not in page and "tied" not in page


def test_the_report_takes_an_equivalence_margin_and_rejects_a_bad_one(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    page = client.get(f"/experiments/{finished_experiment}", params={"equivalence_margin": "0.02"}).text
    assert 'name="equivalence_margin" value="0.02"' in page
    assert "equivalence_margin=0.02" in page
    response = client.get(f"/experiments/{finished_experiment}", params={"equivalence_margin": "-1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == "query.equivalence_margin"
