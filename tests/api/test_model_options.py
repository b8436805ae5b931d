"""Version-2 model options through the HTTP API: listed in the catalog, accepted in version 2, refused with a 422
naming the field otherwise (a version-1 spec, bad values, a conv block that would output nothing)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from tests.api.conftest import NOTHING, RecordingDispatcher, row_counts, small_spec
from tests.training.test_model_options import STRIDED

MNIST1D = {"name": "mnist1d"}


def _errors(response: Any) -> dict[str, str]:
    return {error["loc"]: error["msg"] for error in response.json()["detail"]}


def test_the_catalog_lists_each_model_kinds_fields_with_the_version_they_need(client: TestClient) -> None:
    kinds = {entry["name"]: entry for entry in client.get("/v1/catalog").json()["model_kinds"]}
    cnn = {field["name"]: field for field in kinds["cnn"]["fields"]}
    rnn = {field["name"]: field for field in kinds["rnn"]["fields"]}
    assert {name for name, field in cnn.items() if field["version"] == 2} == {"kernel_sizes", "strides", "padding"}
    assert {name for name, field in rnn.items() if field["version"] == 2} == {"bidirectional"}
    assert cnn["kernel_size"]["version"] == 1 and cnn["kernel_size"]["default"] == 3
    assert cnn["strides"]["json_schema"]["anyOf"][0]["items"] == {"type": "integer", "minimum": 1, "maximum": 11}
    assert "floor((L + 2 x padding - kernel) / stride) + 1" in cnn["padding"]["description"]
    assert rnn["bidirectional"]["default"] is False
    paths = {entry["path"]: entry for entry in client.get("/v1/catalog").json()["factor_paths"]}
    assert paths["model.strides"]["model_kinds"] == ["cnn"] and paths["model.bidirectional"]["model_kinds"] == ["rnn"]


def test_the_issues_strided_net_is_accepted_in_version_2(client: TestClient, dispatcher: RecordingDispatcher) -> None:
    response = client.post("/v1/experiments", json=small_spec(version=2, dataset=MNIST1D, model=STRIDED))
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["model"]["strides"] == [2, 2, 2]
    assert len(dispatcher.run_ids) == 4


@pytest.mark.parametrize(
    "model",
    [STRIDED, {"kind": "rnn", "cell": "gru", "bidirectional": True}, {"kind": "cnn", "kernel_sizes": [3, 3]}],
)
def test_a_version_1_spec_naming_an_option_is_a_422_naming_it(
    model: dict[str, Any], client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(dataset=MNIST1D, model=model))
    assert response.status_code == 422, response.text
    errors = _errors(response)
    for name in set(model) & {"kernel_sizes", "strides", "padding", "bidirectional"}:
        assert errors[f"model.{name}"].startswith(f'model.{name} is only in spec version 2; add "version": 2')
    assert row_counts(db) == NOTHING
    assert dispatcher.enqueued == []


@pytest.mark.parametrize(
    ("model", "location", "fragment"),
    [
        ({**STRIDED, "strides": [2, 0, 2]}, "model.strides.1", "greater than or equal to 1"),
        ({**STRIDED, "strides": [2, 12, 2]}, "model.strides.1", "less than or equal to 11"),
        ({**STRIDED, "kernel_sizes": [5, 3]}, "model.kernel_sizes", "one entry per conv block: channels has 3"),
        ({**STRIDED, "padding": [1, 3, 1]}, "model.padding", "entry 1 must be below its block's kernel size 3"),
        ({**STRIDED, "padding": [1, "same", 1]}, "model.padding", "entry 1 is 'same', which needs stride 1"),
        ({**STRIDED, "padding": [1, "valid", 1]}, "model.padding.1", "'same'"),
        ({**STRIDED, "padding": [1, -1, 1]}, "model.padding.1", "greater than or equal to 0"),
        ({"kind": "cnn", "channels": [4], "strides": [2]}, "model", "strides above 1 need integer padding"),
        ({"kind": "rnn", "bidirectional": True}, "model", "bidirectional needs cell 'gru' or 'lstm'"),
        ({"kind": "rnn", "cell": "lstm", "bidirectional": "maybe"}, "model.bidirectional", "valid boolean"),
        (
            {**STRIDED, "channels": [4] * 5, "kernel_sizes": [5] * 5, "strides": [2] * 5, "padding": [0] * 5},
            "",
            "model: conv block 4 (kernel 5, stride 2, padding 0) gets 2 positions per side and would output -1",
        ),
        (
            {**STRIDED, "pooling": "max"},
            "",
            "model: the pooling after conv block 3 shrinks its 1 positions per side below one",
        ),
    ],
)
def test_bad_options_are_a_422_naming_the_field(
    model: dict[str, Any], location: str, fragment: str, client: TestClient, dispatcher: RecordingDispatcher
) -> None:
    response = client.post("/v1/experiments", json=small_spec(version=2, dataset=MNIST1D, model=model))
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert location in errors, errors
    assert fragment in errors[location]
    assert dispatcher.enqueued == []
