"""Version-2 training options through the HTTP API: optimiser internals (betas, eps, alpha, dampening) listed in the
catalog with the optimizers they apply to, accepted in version 2, and refused with a 422 naming the field otherwise
(a version-1 spec, another optimizer's setting, bad values); the optimiser factor paths; train_metrics."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.conftest import NOTHING, RecordingDispatcher, row_counts, small_spec

SETTINGS = {"betas", "eps", "alpha", "dampening"}


def _errors(response: Any) -> dict[str, str]:
    return {error["loc"]: error["msg"] for error in response.json()["detail"]}


def test_the_catalog_lists_the_training_fields_and_which_optimizer_takes_which_setting(client: TestClient) -> None:
    catalog = client.get("/v1/catalog").json()
    fields = {field["name"]: field for field in catalog["training_fields"]}
    assert fields["train_metrics"]["json_schema"]["enum"] == ["running", "after_epoch"]
    assert fields["train_metrics"]["default"] == "running"
    assert {name for name, field in fields.items() if field["version"] == 2} >= SETTINGS
    assert fields["lr"]["version"] == 1 and fields["optimizer"]["default"] == "adam"
    # The defaults are torch's, so a spec that leaves them out trains as before.
    assert (fields["betas"]["default"], fields["eps"]["default"]) == ([0.9, 0.999], 1e-8)
    assert (fields["alpha"]["default"], fields["dampening"]["default"]) == (0.99, 0.0)
    assert fields["betas"]["json_schema"]["items"] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}
    settings = {entry["name"]: entry["settings"] for entry in catalog["optimizers"]}
    assert settings == {
        "adam": ["betas", "eps"],
        "adamw": ["betas", "eps"],
        "sgd": ["dampening"],
        "rmsprop": ["eps", "alpha"],
    }
    paths = {entry["path"] for entry in catalog["factor_paths"]}
    assert {f"training.{name}" for name in SETTINGS} <= paths


@pytest.mark.parametrize(
    "training",
    [
        {"optimizer": "adam", "betas": [0.5, 0.9], "eps": 1e-6},
        {"optimizer": "adamw", "betas": [0.0, 0.0]},
        {"optimizer": "rmsprop", "alpha": 0.9, "eps": 1e-4},
        {"optimizer": "sgd", "dampening": 0.5},
        {"train_metrics": "after_epoch"},
        {"optimizer": "rmsprop", "alpha": 0.95, "train_metrics": "running"},
    ],
)
def test_settings_of_the_chosen_optimizer_are_accepted_in_version_2(
    training: dict[str, Any], client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(version=2, training={"epochs": 2, **training}))
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]["training"]
    assert {name: stored[name] for name in training} == training
    # Settings left out are not stored: the spec hashes as a spec written before they existed.
    assert not ({*SETTINGS, "train_metrics"} - set(training)) & set(stored)
    assert len(dispatcher.run_ids) == 4


@pytest.mark.parametrize(("name", "value"), [("betas", [0.5, 0.9]), ("train_metrics", "after_epoch")])
def test_a_version_1_spec_naming_a_setting_is_a_422_naming_it(
    name: str, value: Any, client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(training={"epochs": 2, name: value}))
    assert response.status_code == 422, response.text
    message = _errors(response)[f"training.{name}"]
    assert message.startswith(f'training.{name} is only in spec version 2; add "version": 2')
    assert row_counts(db) == NOTHING
    assert dispatcher.enqueued == []


@pytest.mark.parametrize(
    ("training", "location", "fragment"),
    [
        (
            {"optimizer": "sgd", "betas": [0.5, 0.9]},
            "training.betas",
            "training.betas applies to optimizer adam, adamw only; this spec's optimizer is 'sgd'",
        ),
        ({"optimizer": "sgd", "eps": 1e-3}, "training.eps", "applies to optimizer adam, adamw, rmsprop only"),
        ({"optimizer": "adam", "alpha": 0.9}, "training.alpha", "applies to optimizer rmsprop only"),
        ({"optimizer": "rmsprop", "dampening": 0.1}, "training.dampening", "applies to optimizer sgd only"),
        ({"optimizer": "sgd", "nesterov": True, "dampening": 0.1}, "training.dampening", "must be 0 with nesterov"),
        ({"betas": [0.9, 1.0]}, "training.betas.1", "less than 1"),
        ({"betas": [-0.1, 0.9]}, "training.betas.0", "greater than or equal to 0"),
        ({"betas": [0.9]}, "training.betas", "at least 2 items"),
        ({"betas": [0.9, 0.99, 0.999]}, "training.betas", "at most 2 items"),
        ({"betas": [True, 0.9]}, "training.betas.0", "not a boolean"),
        ({"eps": 0.0}, "training.eps", "greater than 0"),
        ({"eps": 2.0}, "training.eps", "less than or equal to 1"),
        ({"optimizer": "rmsprop", "alpha": 1.0}, "training.alpha", "less than 1"),
        ({"optimizer": "sgd", "dampening": 1.5}, "training.dampening", "less than or equal to 1"),
        ({"train_metrics": "final"}, "training.train_metrics", "'running' or 'after_epoch'"),
    ],
)
def test_bad_settings_are_a_422_naming_the_field(
    training: dict[str, Any], location: str, fragment: str, client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(version=2, training={"epochs": 2, **training}))
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert location in errors, errors
    assert fragment in errors[location]
    assert dispatcher.enqueued == []


def test_betas_as_a_factor_give_one_cell_per_level(client: TestClient, dispatcher: RecordingDispatcher) -> None:
    spec = small_spec(version=2, training={"epochs": 2}, factors={"training.betas": [[0.9, 0.999], [0.5, 0.9]]})
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    runs = client.get(f"/v1/experiments/{response.json()['id']}").json()["runs"]
    assert [run["cell"] for run in runs] == ["betas=[0.9,0.999]"] * 4 + ["betas=[0.5,0.9]"] * 4
    assert runs[-1]["cell_levels"] == {"training.betas": [0.5, 0.9]}
    assert len(dispatcher.run_ids) == 8


def test_a_setting_factor_for_another_optimizer_is_a_422_naming_the_level(
    client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    spec = small_spec(version=2, training={"epochs": 2, "optimizer": "sgd"}, factors={"training.alpha": [0.9, 0.95]})
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert "applies to optimizer rmsprop only; this spec's optimizer is 'sgd'" in errors["factors.training.alpha.0"]
    assert dispatcher.enqueued == []
