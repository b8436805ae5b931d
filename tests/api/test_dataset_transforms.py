"""dataset.transforms through the HTTP API: version 2 only, validated naming the field, in the catalog, a factor."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.spec_transforms import TransformSpec
from tests.api.conftest import assert_spec_rejected, small_spec


def spec_with(transforms: Any, **overrides: Any) -> dict[str, Any]:
    return small_spec(version=2, dataset={"name": "digits", "transforms": transforms}, **overrides)


@pytest.mark.parametrize(
    ("spec", "location", "fragments"),
    [
        pytest.param(
            small_spec(dataset={"name": "digits", "transforms": [{"kind": "permute"}]}),
            "dataset.transforms",
            ['only in spec version 2; add "version": 2'],
            id="version 1",
        ),
        pytest.param(
            spec_with([{"kind": "rotate"}]),
            "dataset.transforms.0.kind",
            ["'permute'", "'gaussian_noise'", "'subset'"],
            id="unknown kind lists the allowed ones",
        ),
        pytest.param(
            spec_with([{"kind": "permute", "std": 0.1}]),
            "dataset.transforms.0",
            ["std is not a parameter of transform permute; allowed: seed"],
            id="parameter of another kind",
        ),
        pytest.param(
            spec_with([{"kind": "gaussian_noise", "std": 0}]),
            "dataset.transforms.0",
            ["std must be greater than 0"],
            id="zero noise",
        ),
        pytest.param(
            spec_with([{"kind": "subset", "size": 5000}]),
            "dataset.transforms.0.size",
            ["at most the 1437 training examples of digits"],
            id="subset larger than the training split",
        ),
        pytest.param(
            spec_with([{"kind": "subset", "size": 1000}], training={"epochs": 1, "validation_fraction": 0.5}),
            "dataset.transforms.0.size",
            ["at most the 718 training examples"],
            id="subset larger than what validation leaves",
        ),
        pytest.param(
            spec_with([{"kind": "permute"}] * 9),
            "dataset.transforms",
            ["at most 8 transforms", "ACTLAB_MAX_DATASET_TRANSFORMS"],
            id="too many",
        ),
    ],
)
def test_bad_transforms_are_a_422_naming_the_field(
    client: TestClient, db: Session, spec: dict[str, Any], location: str, fragments: list[str]
) -> None:
    assert_spec_rejected(client, db, spec, location, fragments)


def test_transforms_are_in_the_catalog_and_a_factor_with_whole_lists_as_levels(client: TestClient) -> None:
    catalog = client.get("/v1/catalog").json()
    transforms = {entry["kind"]: entry for entry in catalog["transforms"]}
    assert set(transforms) == {"permute", "gaussian_noise", "subset"}
    assert [parameter["name"] for parameter in transforms["gaussian_noise"]["parameters"]] == ["std", "seed"]
    paths = {entry["path"]: entry for entry in catalog["factor_paths"]}
    assert paths["dataset.transforms"]["changes_data"] is True

    levels = [[], [{"kind": "permute", "seed": 3}], [{"kind": "gaussian_noise", "std": 0.1}]]
    response = client.post(
        "/v1/experiments",
        json=small_spec(version=2, dataset={"name": "digits"}, factors={"dataset.transforms": levels}),
    )
    assert response.status_code == 202, response.text
    from app.spec import load_stored_spec
    from app.spec_factors import expand_cells

    cells = expand_cells(load_stored_spec(client.get(f"/v1/experiments/{response.json()['id']}").json()["spec"]))
    assert [cell.spec.dataset.transforms for cell in cells] == [
        [],
        [TransformSpec(kind="permute", seed=3)],
        [TransformSpec(kind="gaussian_noise", std=0.1, seed=0)],
    ]

    bad = client.post(
        "/v1/experiments",
        json=small_spec(version=2, dataset={"name": "digits"}, factors={"dataset.transforms": [[{"kind": "flip"}]]}),
    )
    assert bad.status_code == 422
    assert any(error["loc"].startswith("factors.dataset.transforms.0") for error in bad.json()["detail"]), bad.text


def test_a_version_1_spec_keeps_its_canonical_json() -> None:
    from app.spec import ExperimentSpec

    spec = ExperimentSpec.model_validate(small_spec())
    assert "transforms" not in spec.model_dump(mode="json")["dataset"]
    assert "transforms" not in spec.canonical_json()
