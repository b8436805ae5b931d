"""A step budget (training.steps, eval_every) through the HTTP API: accepted in version 2 and stored without
epochs, listed in the catalog and as factor paths, and refused with a 422 naming the fields otherwise."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import RecordingDispatcher, small_spec


def _errors(response: Any) -> dict[str, str]:
    return {error["loc"]: error["msg"] for error in response.json()["detail"]}


def test_a_step_budget_is_stored_without_epochs_and_plans_its_evaluations(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(version=2, training={"steps": 10, "eval_every": 4}))
    assert response.status_code == 202, response.text
    body = response.json()
    assert "epochs" not in body["spec"]["training"]
    assert (body["spec"]["training"]["steps"], body["spec"]["training"]["eval_every"]) == (10, 4)
    # Four runs of ceil(10 / 4) = 3 evaluations.
    assert body["progress"]["total_epochs"] == 12
    run = client.get(f"/v1/runs/{dispatcher.run_ids[0]}").json()
    assert run["epochs_planned"] == 3
    # eval_every defaults to one pass over the training data: digits trains on 1437 examples, 12 batches of 128.
    default = client.post("/v1/experiments", json=small_spec(version=2, training={"steps": 30}))
    assert default.status_code == 202, default.text
    assert default.json()["progress"]["total_epochs"] == 4 * 3
    assert "eval_every" not in default.json()["spec"]["training"]


def test_the_catalog_lists_steps_and_eval_every_as_version_2_fields_and_factor_paths(client: TestClient) -> None:
    catalog = client.get("/v1/catalog").json()
    fields = {field["name"]: field for field in catalog["training_fields"]}
    assert fields["steps"]["version"] == 2 and fields["steps"]["default"] is None
    assert fields["eval_every"]["version"] == 2 and "one pass" in fields["eval_every"]["description"]
    assert "evaluations" in fields["step_size"]["description"]
    assert {"training.steps", "training.eval_every"} <= {entry["path"] for entry in catalog["factor_paths"]}
    limits = {entry["name"]: entry for entry in catalog["limits"]}
    assert limits["max_steps"]["environment_variable"] == "ACTLAB_MAX_STEPS"


@pytest.mark.parametrize(
    ("spec", "location", "fragment"),
    [
        ({"training": {"steps": 10, "epochs": 3}}, "training.steps", "training.steps and training.epochs exclude"),
        ({"training": {"eval_every": 3}}, "training.eval_every", "training.eval_every needs training.steps"),
        ({"training": {"steps": 3, "eval_every": 4}}, "training.eval_every", "at most training.steps (3), got 4"),
        ({"training": {"steps": 100_001}}, "training.steps", "at most 100000 (setting ACTLAB_MAX_STEPS)"),
        ({"training": {"steps": 0}}, "training.steps", "greater than or equal to 1"),
        (
            {"training": {"steps": 1000, "eval_every": 2}},
            "training.eval_every",
            "500 evaluations (ceil(1000 / 2)) exceed 200, the rows a run may have (setting ACTLAB_MAX_EPOCHS)",
        ),
        ({"version": 1, "training": {"steps": 10}}, "training.steps", "training.steps is only in spec version 2"),
        (
            {"factors": {"training.eval_every": [2, 20]}, "training": {"steps": 10}},
            "factors.training.eval_every.1",
            "at most training.steps (10), got 20",
        ),
    ],
)
def test_a_bad_step_budget_is_a_422_naming_the_fields(
    spec: dict[str, Any], location: str, fragment: str, client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(**{"version": 2, **spec}))
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert location in errors, errors
    assert fragment in errors[location]
    assert dispatcher.enqueued == []


def test_a_steps_factor_gives_each_cell_its_budget_and_refuses_epochs_beside_it(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    spec = small_spec(version=2, training={}, factors={"training.steps": [12, 30]})
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    # The stored base has no epochs: each cell's budget is its level (1 and 3 passes of 12 steps, 4 runs each).
    assert "epochs" not in response.json()["spec"]["training"]
    assert response.json()["progress"]["total_epochs"] == 4 * 1 + 4 * 3
    both = client.post("/v1/experiments", json={**spec, "training": {"epochs": 3}})
    assert both.status_code == 422, both.text
    assert "training.epochs and the factor training.steps exclude" in _errors(both)["training.epochs"]
