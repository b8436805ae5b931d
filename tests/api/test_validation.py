"""Bad specs and bad requests: a 4xx naming the field, never a 500, and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.conftest import NOTHING, RecordingDispatcher, row_counts, small_spec


def _errors(response: Any) -> dict[str, str]:
    return {error["loc"]: error["msg"] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("overrides", "location", "fragments"),
    [
        pytest.param(
            {"activations": ["relu", "relu2"]},
            "activations.1.name",
            ["unknown activation 'relu2'", "allowed:", "leaky_relu", "tanh"],
            id="unknown activation",
        ),
        pytest.param({"training": {"lr": -0.1}}, "training.lr", ["greater than 0"], id="negative lr"),
        pytest.param(
            {"training": {"epochs": 10**9}}, "training.epochs", ["at most 200", "ACTLAB_MAX_EPOCHS"], id="1e9 epochs"
        ),
        pytest.param(
            {"model": {"kind": "mlp", "hidden": [8] * 10_000}},
            "model.hidden",
            ["at most 32 entries", "ACTLAB_MAX_DEPTH"],
            id="10000-layer mlp",
        ),
        pytest.param(
            {"activations": [{"name": "custom", "expression": "x * __import__('os')"}]},
            "activations.0.expression",
            ["invalid expression"],
            id="malformed expression",
        ),
        pytest.param(
            {"activations": [{"name": "custom", "expression": "x *"}]},
            "activations.0.expression",
            ["invalid expression"],
            id="unparsable expression",
        ),
        pytest.param({"colour": "blue"}, "colour", ["Extra inputs are not permitted"], id="extra top field"),
        pytest.param({"owner": "someone-else"}, "owner", ["set by the service"], id="server-owned field"),
        pytest.param(
            {"training": {"epochs": 3, "learning_rate": 0.1}},
            "training.learning_rate",
            ["Extra inputs are not permitted"],
            id="extra nested field",
        ),
        pytest.param({"seeds": "0,1"}, "seeds", ["valid list"], id="wrong type seeds"),
        pytest.param({"training": {"epochs": "many"}}, "training.epochs", ["valid integer"], id="wrong type epochs"),
        pytest.param(
            {"dataset": {"name": "imagenet"}},
            "dataset.name",
            ["'digits'", "'mnist1d'", "'cifar10'"],
            id="unknown dataset lists allowed",
        ),
        pytest.param({"model": {"kind": "transformer"}}, "model", ["'mlp', 'cnn', 'rnn'"], id="unknown model kind"),
        pytest.param(
            {"model": {"kind": "cnn", "channels": [-4]}},
            "model.channels.0",
            ["greater than or equal to 1"],
            id="discriminator tag stripped",
        ),
        pytest.param({"device": "tpu"}, "device", ["'auto', 'cpu' or 'cuda'"], id="unknown device"),
        pytest.param(
            {"training": {"optimizer": "lbfgs"}},
            "training.optimizer",
            ["'adam', 'adamw', 'sgd' or 'rmsprop'"],
            id="unknown optimizer lists the catalog names",
        ),
        pytest.param(
            {"activations": [{"name": "hardtanh", "params": {"min_val": 2.0}}]},
            "activations.0",
            ["params.min_val must be below params.max_val"],
            id="hardtanh clip bounds out of order",
        ),
        pytest.param(
            {"dataset": {"name": "spirals", "params": {"samples": 10**9}}},
            "dataset",
            ["params.samples must be at most"],
            id="spirals samples above the setting",
        ),
        pytest.param(
            {"dataset": {"name": "mnist1d", "params": {"num_samples": 10**9}}},
            "dataset",
            ["params.num_samples must be at most"],
            id="mnist1d samples above the setting",
        ),
        pytest.param(
            {"dataset": {"name": "mnist1d", "params": {"train_split": 1.0}}},
            "dataset",
            ["params.train_split must be at most 0.95"],
            id="mnist1d train_split out of range",
        ),
        pytest.param(
            {"dataset": {"name": "mnist1d", "params": {"template_len": 20}}},
            "dataset",
            ["unknown parameter 'template_len'", "num_samples", "train_split", "iid_noise_scale", "seed"],
            id="mnist1d unknown parameter lists the allowed ones",
        ),
        pytest.param({"seeds": [0, 0]}, "seeds", ["unique"], id="duplicate seeds"),
        # PostgreSQL cannot store NUL in text: refused up front instead of failing in the database.
        pytest.param({"name": "a\u0000b"}, "name", ["NUL character"], id="NUL in text"),
        pytest.param(
            {"activations": [{"name": "relu", "label": "r\u0000"}]}, "activations.0.label", ["NUL"], id="NUL deep"
        ),
    ],
)
def test_bad_spec_is_rejected_naming_the_field_and_nothing_is_stored(
    client: TestClient,
    db: Session,
    dispatcher: RecordingDispatcher,
    overrides: dict[str, Any],
    location: str,
    fragments: list[str],
) -> None:
    response = client.post("/v1/experiments", json=small_spec(**overrides), headers={"Idempotency-Key": "k"})

    assert response.status_code == 422
    errors = _errors(response)
    assert location in errors, errors
    for fragment in fragments:
        assert fragment in errors[location]
    assert row_counts(db) == NOTHING
    assert dispatcher.enqueued == []


def _number_fields() -> list[Any]:
    """Every number field of the spec's input models (found by introspection, so new fields are covered), each as
    the overrides that put a JSON true there and the location the 422 must name."""
    from typing import Annotated, get_args, get_origin

    from app.spec import ExperimentSpec, TrainingSpec
    from app.spec_models import CnnSpec, MlpSpec, RnnSpec

    def numeric(annotation: Any) -> bool:
        if get_origin(annotation) is Annotated:
            return numeric(get_args(annotation)[0])
        return annotation in (int, float) or any(numeric(argument) for argument in get_args(annotation))

    cases = []
    sections: list[tuple[Any, str, dict[str, Any]]] = [
        (ExperimentSpec, "", {}),
        (TrainingSpec, "training", {}),
        (MlpSpec, "model", {"kind": "mlp"}),
        (CnnSpec, "model", {"kind": "cnn"}),
        (RnnSpec, "model", {"kind": "rnn"}),
    ]
    for model, section, base in sections:
        for name, field in model.model_fields.items():
            if not numeric(field.annotation):
                continue
            # A list field, optional or not (version-2 per-block lists are ``list[...] | None``).
            is_list = get_origin(field.annotation) is list or any(
                get_origin(argument) is list for argument in get_args(field.annotation)
            )
            value: Any = [True] if is_list else True
            location = ".".join(part for part in (section, name, "0" if is_list else "") if part)
            overrides = {section: {**base, name: value}} if section else {name: value}
            cases.append(pytest.param(overrides, location, id=location))
    return cases


@pytest.mark.parametrize(("overrides", "location"), _number_fields())
def test_a_boolean_is_never_taken_for_a_number_anywhere_in_the_spec(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher, overrides: dict[str, Any], location: str
) -> None:
    response = client.post("/v1/experiments", json=small_spec(**overrides), headers={"Idempotency-Key": "b"})

    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert location in errors, errors
    assert "not a boolean" in errors[location]
    assert row_counts(db) == NOTHING
    assert dispatcher.enqueued == []


def test_seeds_true_is_rejected_rather_than_trained_as_seed_one(client: TestClient, db: Session) -> None:
    response = client.post("/v1/experiments", json=small_spec(seeds=[0, True]), headers={"Idempotency-Key": "s"})

    assert response.status_code == 422
    assert _errors(response) == {"seeds.1": "must be a number, not a boolean (got true)"}
    assert row_counts(db) == NOTHING


def _pydantic_bound_keys(node: Any, path: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("ge", "gt", "le", "lt") and not isinstance(value, dict):
                yield f"{path}.{key}"
            yield from _pydantic_bound_keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _pydantic_bound_keys(value, f"{path}.{index}")


def test_every_numeric_bound_in_the_openapi_document_is_json_schema(client: TestClient) -> None:
    # Clients generated from the document read "minimum"/"maximum"; pydantic writes its own "ge" when a
    # bound follows a validator, which no JSON Schema tool understands.
    document = client.get("/openapi.json").json()

    assert list(_pydantic_bound_keys(document["components"]["schemas"])) == []


def test_cost_and_grid_limits_follow_the_app_settings(client: TestClient, db: Session) -> None:
    too_many_arms = small_spec(
        activations=["relu", "tanh", "elu", "selu"], seeds=list(range(32)), training={"epochs": 1}
    )
    accepted = client.post("/v1/experiments", json=too_many_arms)
    assert accepted.status_code == 202  # 128 arms is within the default limit of 256

    huge_model = small_spec(model={"kind": "mlp", "hidden": [4096] * 32})
    rejected = client.post("/v1/experiments", json=huge_model)
    assert rejected.status_code == 422
    assert "ACTLAB_MAX_PARAMETERS" in rejected.json()["detail"][0]["msg"]
    assert row_counts(db)["experiments"] == 1


def test_limits_come_from_the_settings_the_app_was_built_with(settings: Any, tmp_path: Any) -> None:
    from app.main import create_app

    strict = settings.model_copy(update={"max_epochs": 2, "auth_required": False})
    with TestClient(create_app(strict)) as client:
        response = client.post("/v1/experiments", json=small_spec())
    assert response.status_code == 422
    assert "at most 2" in _errors(response)["training.epochs"]


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        pytest.param(b'{"name": "x", ', {"content-type": "application/json"}, "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe\x00garbage", {"content-type": "application/json"}, "not valid JSON", id="binary"),
        pytest.param(b"", {"content-type": "application/json"}, "empty", id="empty"),
        pytest.param(b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}, "", id="deeply nested"),
    ],
)
def test_malformed_json_gets_422_with_a_clear_message(
    client: TestClient, db: Session, body: bytes, headers: dict[str, str], fragment: str
) -> None:
    response = client.post("/v1/experiments", content=body, headers=headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ""
    assert fragment in error["msg"]
    assert row_counts(db) == NOTHING


def test_json_that_is_not_an_object_names_the_problem(client: TestClient, db: Session) -> None:
    response = client.post("/v1/experiments", json=[1, 2, 3])
    assert response.status_code == 422
    assert "valid dictionary" in response.json()["detail"][0]["msg"]
    assert row_counts(db) == NOTHING


def test_spec_sent_without_a_json_content_type_gets_415_naming_it(client: TestClient, db: Session) -> None:
    # curl -d sends application/x-www-form-urlencoded unless told otherwise; so does a cross-site form.
    import json

    response = client.post(
        "/v1/experiments",
        content=json.dumps(small_spec()),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert row_counts(db) == NOTHING


def test_oversized_body_by_content_length_gets_413(client: TestClient, db: Session) -> None:
    spec = small_spec(name="x" * 70_000)
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 413
    assert "65536 bytes" in response.json()["detail"]
    assert row_counts(db) == NOTHING


def test_oversized_chunked_body_gets_413(client: TestClient, db: Session) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}'

    response = client.post("/v1/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert row_counts(db) == NOTHING


def test_small_chunked_body_is_accepted(client: TestClient) -> None:
    import json

    payload = json.dumps(small_spec()).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 50):
            yield payload[start : start + 50]

    response = client.post("/v1/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 202


def test_overlong_idempotency_key_is_rejected(client: TestClient, db: Session) -> None:
    response = client.post("/v1/experiments", json=small_spec(), headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == "header.Idempotency-Key"
    assert row_counts(db) == NOTHING


def test_json_nested_nearly_as_deep_as_the_parser_allows_is_a_clean_422(client: TestClient, db: Session) -> None:
    import sys

    depth = sys.getrecursionlimit() - 60
    body = b'{"name": ' + b"[" * depth + b"]" * depth + b"}"
    response = client.post("/v1/experiments", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "name" in {error["loc"] for error in response.json()["detail"]}
    assert row_counts(db) == NOTHING
