"""Input-conditioned activations through the HTTP API: listed in the catalog, accepted, bounded."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import RecordingDispatcher, small_spec


def test_the_catalog_lists_them_as_input_conditioned_with_their_parameters(client: TestClient) -> None:
    entries = {entry["name"]: entry for entry in client.get("/v1/catalog").json()["activations"]}
    for name, parameters in (("dyrelu", {"pieces", "reduction", "lambda_a", "lambda_b"}), ("meta_acon", {"reduction"})):
        assert entries[name]["input_conditioned"] is True
        assert entries[name]["learnable"] is True
        assert {parameter["name"] for parameter in entries[name]["parameters"]} == parameters
    assert entries["dyrelu"]["formula"].startswith("max(x, 0) at a zero hyper-network output")
    assert entries["relu"]["input_conditioned"] is False


def test_a_spec_with_them_is_accepted_and_its_runs_are_enqueued(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    spec = small_spec(
        activations=[{"name": "dyrelu", "params": {"pieces": 3, "reduction": 2}}, "meta_acon"],
        model={"kind": "cnn", "channels": [4]},
    )
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    assert len(dispatcher.run_ids) == 4
    labels = {run["activation"] for run in response.json()["runs"]}
    assert labels == {"dyrelu(pieces=3, reduction=2)", "meta_acon"}


@pytest.mark.parametrize(
    ("activation", "location", "fragment"),
    [
        ({"name": "dyrelu", "params": {"pieces": 5}}, "activations.0", "params.pieces must be at most 4"),
        ({"name": "dyrelu", "params": {"pieces": 1.5}}, "activations.0", "params.pieces must be an integer"),
        ({"name": "dyrelu", "params": {"reduction": 0}}, "activations.0", "params.reduction must be at least 1"),
        ({"name": "dyrelu", "params": {"lambda_b": -1}}, "activations.0", "params.lambda_b must be at least 0"),
        ({"name": "meta_acon", "params": {"reduction": 65}}, "activations.0", "params.reduction must be at most 64"),
        ({"name": "meta_acon", "params": {"pieces": 2}}, "activations.0", "pieces"),
    ],
)
def test_bad_parameters_are_a_422_naming_the_field(
    client: TestClient, dispatcher: RecordingDispatcher, activation: Any, location: str, fragment: str
) -> None:
    response = client.post("/v1/experiments", json=small_spec(activations=[activation]))
    assert response.status_code == 422, response.text
    errors = {error["loc"]: error["msg"] for error in response.json()["detail"]}
    assert location in errors, errors
    assert fragment in errors[location]
    assert dispatcher.enqueued == []


def test_their_hypernetworks_count_against_the_parameter_limit(client: TestClient) -> None:
    # With reduction 1 each hyper-network on 2,048 units holds 2,048 x 2,048 + 2,048 x 8,192 weights: 21M
    # parameters against the limit of 20M, while the relu model has 4.3M.
    spec = small_spec(
        activations=[{"name": "dyrelu", "params": {"reduction": 1}}], model={"kind": "mlp", "hidden": [2048, 2048]}
    )
    relu = client.post("/v1/experiments", json=small_spec(model={"kind": "mlp", "hidden": [2048, 2048]}))
    assert relu.status_code == 202, relu.text
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 422, response.text
    assert "ACTLAB_MAX_PARAMETERS" in response.text
