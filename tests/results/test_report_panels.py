"""The report shows no empty panels and highlights raised diagnostics flags (issue 15 item 7)."""

from __future__ import annotations

import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.results.conftest import FAKE_SPEC, insert_experiment
from tests.results.synthetic import SyntheticArm


def test_a_raised_vanishing_flag_is_highlighted_and_a_lowered_one_is_not(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    page = client.get(f"/experiments/{finished_experiment}").text
    table = page[page.index('<table id="diagnostics-table">') :]
    table = table[: table.index("</table>")]
    rows = {row.split("</td>")[0].rsplit(">", 1)[1]: row for row in re.findall(r"<tr>(.*?)</tr>", table)}
    # sigmoid's first layer gets 2e-5 of the last layer's gradient norm: vanishing.
    assert '<td class="flag-raised">yes</td>' in rows["sigmoid"]
    assert "flag-raised" not in rows["relu"] and '<td class="">no</td>' in rows["relu"]
    assert "Learned activation functions" in page and "Dead and saturated units" in page


def test_panels_with_nothing_to_draw_are_left_out(client: TestClient, db: Session) -> None:
    spec = {**FAKE_SPEC, "activations": ["relu", "tanh"]}
    arms = [SyntheticArm("relu", "relu", 0.9), SyntheticArm("tanh", "tanh", 0.85)]
    page = client.get(f"/experiments/{insert_experiment(db, spec_payload=spec, arms=arms, status='succeeded')}").text
    assert "Learned activation functions" not in page and "learned-functions" not in page
    assert "Dead and saturated units" not in page and "unit-health" not in page
    assert "Gradient norm per layer" in page and "Learning curves" in page
