"""Query parameters are checked like bodies (unknown or repeated ones get 422), and 405s list every allowed method."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from tests.api.conftest import small_spec


def test_a_misspelt_filter_is_a_422_not_silently_ignored(client: TestClient) -> None:
    experiment = client.post("/v1/experiments", json=small_spec()).json()
    response = client.get(f"/v1/experiments/{experiment['id']}/metrics", params={"activaton": "relu"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == "query.activaton"
    assert "allowed: activation, epoch_max, epoch_min, format, run_id, seed" in error["msg"]


def test_a_one_value_parameter_given_twice_is_a_422(client: TestClient) -> None:
    response = client.get("/v1/experiments", params=[("limit", "5"), ("limit", "50")])
    assert response.status_code == 422
    assert response.json()["detail"][0] == {
        "loc": "query.limit",
        "msg": "limit takes one value but was given 2 times",
        "type": "repeated_parameter",
    }


def test_repeatable_parameters_may_repeat(client: TestClient) -> None:
    response = client.get("/v1/experiments", params=[("status", "queued"), ("status", "running")])
    assert response.status_code == 200


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    response = client.request("DELETE", "/v1/experiments")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"
    single = client.request("PUT", f"/v1/experiments/{uuid.uuid4()}/cancel")
    assert single.headers["Allow"] == "POST"
