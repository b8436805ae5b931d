"""Factorial specs (version 2): every factor path of the catalog validates its levels as its field, cells and arms."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.catalog import FACTOR_PATHS
from app.config import Settings
from app.spec import ExperimentSpec
from app.spec_cost import estimate_cost, estimate_experiment_cost
from app.spec_factors import cell_label, expand_cells, run_spec
from tests.api.conftest import NOTHING, RecordingDispatcher, row_counts, small_spec

CNN = {"kind": "cnn", "channels": [4]}
RNN = {"kind": "rnn", "hidden_size": 8}


# One row per catalog factor path: (path used, base overrides, two good levels, a bad second level, message fragment).
# A path added to the catalog without a row here fails test_every_catalog_path_has_a_row.
ROWS: dict[str, tuple[str, dict[str, Any], list[Any], Any, str]] = {
    "dataset": ("dataset", {}, [{"name": "digits"}, {"name": "mnist1d"}], {"name": "nope"}, "Input should be"),
    "dataset.name": ("dataset.name", {}, ["digits", "mnist1d"], "nope", "Input should be"),
    "dataset.params.*": (
        "dataset.params.noise",
        {"dataset": {"name": "spirals", "params": {"samples": 200}}},
        [0.1, 0.5],
        99,
        "at most 5",
    ),
    "dataset.transforms": (
        "dataset.transforms",
        {},
        [[], [{"kind": "permute", "seed": 3}]],
        [{"kind": "subset", "size": 5000}],
        "at most the 1437 training examples",
    ),
    "model": ("model", {}, [{"kind": "mlp", "hidden": [8]}, RNN], {"kind": "rnn", "cell": "bad"}, "Input should be"),
    "model.hidden": ("model.hidden", {}, [[8], [8, 8]], [5000], "at most 4096"),
    "model.norm": ("model.norm", {}, ["none", "batch"], "group", "Input should be"),
    "model.dropout": ("model.dropout", {}, [0.0, 0.2], 1.5, "less than 1"),
    "model.residual": ("model.residual", {}, [False, True], "maybe", "valid boolean"),
    "model.channels": ("model.channels", {"model": CNN}, [[4], [4, 8]], [0], "greater than or equal to 1"),
    "model.kernel_sizes": ("model.kernel_sizes", {"model": CNN}, [[3], [5]], [12], "less than or equal to 11"),
    "model.strides": ("model.strides", {"model": {**CNN, "padding": [1]}}, [[1], [2]], [0], "greater than or equal"),
    "model.padding": ("model.padding", {"model": CNN}, [["same"], [1]], [3], "below its block's kernel size 3"),
    "model.cell": ("model.cell", {"model": RNN}, ["rnn", "gru"], "transformer", "Input should be"),
    "model.bidirectional": (
        "model.bidirectional",
        {"model": {**RNN, "cell": "gru"}},
        [False, True],
        "maybe",
        "valid boolean",
    ),
    "training.optimizer": ("training.optimizer", {}, ["adam", "sgd"], "adamx", "Input should be"),
    "training.lr": ("training.lr", {}, [0.001, 0.01], -1, "greater than 0"),
    "training.batch_size": ("training.batch_size", {}, [32, 64], 10**6, "at most 8192"),
    "training.init": ("training.init", {}, ["auto", "default"], "magic", "Input should be"),
    "training.grad_clip": ("training.grad_clip", {}, [None, 1.0], -1, "greater than 0"),
    "training.weight_decay": ("training.weight_decay", {}, [0.0, 0.01], 2, "less than or equal to 1"),
    "training.schedule": ("training.schedule", {}, ["none", "cosine"], "linear", "Input should be"),
    "training.betas": ("training.betas", {}, [[0.9, 0.999], [0.5, 0.9]], [0.9, 1.0], "less than 1"),
    "training.eps": ("training.eps", {}, [1e-8, 1e-4], 0, "greater than 0"),
    "training.alpha": (
        "training.alpha",
        {"training": {"epochs": 3, "optimizer": "rmsprop"}},
        [0.99, 0.9],
        1.0,
        "less than 1",
    ),
    "training.dampening": (
        "training.dampening",
        {"training": {"epochs": 3, "optimizer": "sgd"}},
        [0.0, 0.5],
        2,
        "less than or equal to 1",
    ),
    "training.steps": ("training.steps", {"training": {}}, [10, 20], 0, "greater than or equal to 1"),
    "training.eval_every": (
        "training.eval_every",
        {"training": {"steps": 10}},
        [2, 5],
        20,
        "at most training.steps (10), got 20",
    ),
}


def factorial(factors: dict[str, list[Any]], **overrides: Any) -> dict[str, Any]:
    """A version-2 small spec with these factors."""
    return small_spec(version=2, factors=factors, **overrides)


def _errors(response: Any) -> dict[str, str]:
    return {error["loc"]: error["msg"] for error in response.json()["detail"]}


def _value_at(payload: dict[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        value = value[part]
    return value


def test_every_catalog_path_has_a_row() -> None:
    assert set(ROWS) == set(FACTOR_PATHS)


@pytest.mark.parametrize("entry", list(FACTOR_PATHS))
def test_each_factor_path_takes_valid_levels_into_its_cells(entry: str) -> None:
    path, overrides, good, _bad, _fragment = ROWS[entry]
    spec = ExperimentSpec.model_validate(factorial({path: good}, **overrides))
    cells = expand_cells(spec)
    assert len(cells) == 2
    for cell, level in zip(cells, good, strict=True):
        assert cell.levels == {path: level}
        assert cell.spec.factors is None
        effective = _value_at(cell.spec.model_dump(mode="json"), path)
        if isinstance(level, dict):
            assert {key: effective[key] for key in level} == level
        else:
            assert effective == level
    assert cells[0].label != cells[1].label


@pytest.mark.parametrize("entry", list(FACTOR_PATHS))
def test_a_bad_level_is_a_422_naming_the_path_and_level(
    entry: str, client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    path, overrides, good, bad, fragment = ROWS[entry]
    response = client.post("/v1/experiments", json=factorial({path: [good[0], bad]}, **overrides))
    assert response.status_code == 422, response.text
    errors = _errors(response)
    assert f"factors.{path}.1" in errors, errors
    assert fragment in errors[f"factors.{path}.1"]
    assert row_counts(db) == NOTHING
    assert dispatcher.run_ids == []


def test_a_field_of_another_model_kind_is_named_for_that_kind(client: TestClient) -> None:
    response = client.post("/v1/experiments", json=factorial({"model.hidden": [[8], [16]]}, model=RNN))
    assert response.status_code == 422
    assert _errors(response)["factors.model.hidden.0"] == "model.hidden does not exist on model kind 'rnn'"


def test_the_model_kind_in_force_in_each_cell_decides() -> None:
    # model.cell exists in the rnn cell only: the mlp cell rejects it, naming the level.
    spec = factorial({"model": [{"kind": "mlp", "hidden": [8]}, RNN], "model.cell": ["gru"]})
    with pytest.raises(ValueError, match=r"model\.cell does not exist on model kind 'mlp'"):
        ExperimentSpec.model_validate(spec)


def test_a_level_that_alone_breaks_another_field_is_named_by_its_path_and_index(client: TestClient) -> None:
    # A dataset parameter the dataset in force lacks (digits has none), for every dataset.name level it meets.
    response = client.post(
        "/v1/experiments", json=factorial({"dataset.name": ["spirals", "digits"], "dataset.params.noise": [0.1]})
    )
    assert response.status_code == 422
    assert _errors(response) == {
        "factors.dataset.params.noise.0": "dataset: unknown parameter 'noise' for dataset digits; allowed: none"
    }
    # Where only the combination fails (noise exists on the spirals base), the cell is named.
    combined = factorial(
        {"dataset.name": ["spirals", "digits"], "dataset.params.noise": [0.1]}, dataset={"name": "spirals"}
    )
    response = client.post("/v1/experiments", json=combined)
    assert response.status_code == 422
    assert _errors(response) == {
        "factors": "cell name=digits, noise=0.1: dataset: unknown parameter 'noise' for dataset digits; allowed: none"
    }
    # An optimizer level that does not take a setting of the base spec.
    base = {"epochs": 3, "optimizer": "adam", "betas": [0.9, 0.99]}
    response = client.post("/v1/experiments", json=factorial({"training.optimizer": ["adam", "sgd"]}, training=base))
    assert response.status_code == 422
    [(where, message)] = _errors(response).items()
    assert where == "factors.training.optimizer.1"
    assert message.startswith("training.betas: training.betas applies to optimizer adam, adamw only")


def test_version_1_with_factors_is_a_422_naming_factors(client: TestClient, db: Session) -> None:
    response = client.post("/v1/experiments", json=small_spec(factors={"training.lr": [0.01, 0.1]}))
    assert response.status_code == 422
    assert '"version": 2' in _errors(response)["factors"]
    assert row_counts(db) == NOTHING


def test_an_unknown_path_lists_the_allowed_ones(client: TestClient) -> None:
    response = client.post("/v1/experiments", json=factorial({"training.epochs": [1, 2]}))
    assert response.status_code == 422
    message = _errors(response)["factors.training.epochs"]
    assert "unknown factor path 'training.epochs'" in message
    for path in ("model.hidden", "training.init", "dataset.params.<name>"):
        assert path in message


def test_version_1_specs_are_unchanged() -> None:
    spec = ExperimentSpec.model_validate(small_spec())
    assert "factors" not in spec.model_dump(mode="json")
    assert spec.version == 1
    [cell] = expand_cells(spec)
    assert (cell.index, cell.levels, cell.label, cell.spec) == (0, {}, "", spec)
    assert run_spec(spec.model_dump(mode="json"), None) == spec
    # Version 2 without factors is the same experiment.
    assert expand_cells(ExperimentSpec.model_validate(small_spec(version=2)))[0].spec.seeds == [0, 1]


def test_cells_are_the_product_of_levels_with_readable_labels() -> None:
    factors = {
        "training.lr": [0.001, 0.003],
        "model.hidden": [[16, 16], [16] * 4],
        "training.init": ["auto", "default"],
    }
    cells = expand_cells(ExperimentSpec.model_validate(factorial(factors)))
    assert len(cells) == 8
    assert [cell.index for cell in cells] == list(range(8))
    assert cells[-1].label == "hidden=4x16, init=default, lr=0.003"
    assert cells[0].label == "hidden=2x16, init=auto, lr=0.001"
    assert len({cell.label for cell in cells}) == 8
    # The order of the spec's keys does not matter (JSONB does not keep it).
    reordered = dict(reversed(list(factors.items())))
    assert [cell.label for cell in expand_cells(ExperimentSpec.model_validate(factorial(reordered)))] == [
        cell.label for cell in cells
    ]
    last = cells[-1].spec
    assert (last.model.hidden, last.training.init, last.training.lr) == ([16] * 4, "default", 0.003)  # type: ignore[union-attr]
    assert run_spec(ExperimentSpec.model_validate(factorial(factors)).model_dump(mode="json"), cells[-1].levels) == last
    assert cell_label({"model.hidden": [64, 32, 32], "training.grad_clip": None}) == "hidden=64-2x32, grad_clip=none"


def test_limits_count_every_arm_of_every_cell(settings: Settings) -> None:
    spec = ExperimentSpec.model_validate(factorial({"model.hidden": [[8], [64, 64]], "training.lr": [0.01, 0.1]}))
    cells = expand_cells(spec)
    assert estimate_experiment_cost(spec) == sum(estimate_cost(cell.spec) for cell in cells)
    assert estimate_experiment_cost(spec) > 4 * estimate_cost(cells[0].spec)
    limits = settings.model_copy(update={"max_arms": 15})
    with pytest.raises(ValueError, match=r"16 arms \(cells x activations x seeds\) exceed the limit of 15"):
        ExperimentSpec.model_validate(spec.model_dump(mode="json"), context={"limits": limits})
    cost_limit = settings.model_copy(update={"max_cost": estimate_experiment_cost(spec) - 1})
    with pytest.raises(ValueError, match="over all cells"):
        ExperimentSpec.model_validate(spec.model_dump(mode="json"), context={"limits": cost_limit})
    cell_limit = settings.model_copy(update={"max_cells": 3})
    with pytest.raises(ValueError, match=r"4 cells .* exceed 3 .*ACTLAB_MAX_CELLS"):
        ExperimentSpec.model_validate(spec.model_dump(mode="json"), context={"limits": cell_limit})
    level_limit = settings.model_copy(update={"max_factor_levels": 1})
    with pytest.raises(ValueError, match="ACTLAB_MAX_FACTOR_LEVELS"):
        ExperimentSpec.model_validate(spec.model_dump(mode="json"), context={"limits": level_limit})


def test_repeated_levels_are_named(client: TestClient) -> None:
    response = client.post("/v1/experiments", json=factorial({"training.lr": [0.01, 0.01]}))
    assert response.status_code == 422
    assert _errors(response)["factors.training.lr.1"] == "level 1 repeats level 0"


def test_the_catalog_lists_the_factor_paths(client: TestClient) -> None:
    paths = {entry["path"]: entry for entry in client.get("/v1/catalog").json()["factor_paths"]}
    assert set(paths) == set(FACTOR_PATHS)
    assert paths["model.cell"]["model_kinds"] == ["rnn"]
    assert paths["dataset.name"]["changes_data"] is True
    assert paths["training.init"]["changes_data"] is False


def test_one_run_per_cell_activation_and_seed_and_seed_extensions_cover_every_cell(
    client: TestClient, db: Session, dispatcher: RecordingDispatcher
) -> None:
    from sqlalchemy import select

    from app.models import Experiment, Run

    spec = factorial({"model.hidden": [[8], [8, 8]], "training.init": ["auto", "default"]})
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    experiment_id = response.json()["id"]
    runs = db.execute(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))).scalars().all()
    assert len(runs) == 4 * 2 * 2 == len(dispatcher.run_ids)
    arms = {(run.cell_label, run.activation_label, run.seed) for run in runs}
    assert len(arms) == 16
    assert {run.cell_label for run in runs} == {
        "hidden=8, init=auto",
        "hidden=8, init=default",
        "hidden=2x8, init=auto",
        "hidden=2x8, init=default",
    }
    assert {run.cell_index for run in runs} == {0, 1, 2, 3}
    assert all(run.cell_levels and set(run.cell_levels) == {"model.hidden", "training.init"} for run in runs)
    listed = client.get(f"/v1/experiments/{experiment_id}").json()["runs"]
    assert [run["cell"] for run in listed[:4]] == ["hidden=8, init=auto"] * 4
    assert listed[-1]["cell"] == "hidden=2x8, init=default"
    assert listed[-1]["cell_levels"] == {"model.hidden": [8, 8], "training.init": "default"}
    experiment = db.get(Experiment, uuid.UUID(experiment_id))
    assert experiment is not None and experiment.total_epochs == 16 * 3
    extended = client.post(f"/v1/experiments/{experiment_id}/seeds", json={"seeds": [5]})
    assert extended.status_code == 202, extended.text
    db.expire_all()
    runs = db.execute(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))).scalars().all()
    added = [run for run in runs if run.seed == 5]
    assert len(added) == 4 * 2
    assert {run.cell_index for run in added} == {0, 1, 2, 3}
    assert db.get(Experiment, uuid.UUID(experiment_id)).total_epochs == 24 * 3  # type: ignore[union-attr]


def test_metric_tables_name_the_cell_and_each_factor_level(client: TestClient, db: Session) -> None:
    import io

    import pandas as pd
    from sqlalchemy import select

    from app.models import EpochMetric, LayerMetric, Run

    spec = factorial({"model.hidden": [[8], [8, 8]], "training.init": ["auto", "default"]}, seeds=[0])
    experiment_id = client.post("/v1/experiments", json=spec).json()["id"]
    runs = db.execute(select(Run).where(Run.experiment_id == uuid.UUID(experiment_id))).scalars().all()
    for run in runs:
        db.add(EpochMetric(run_id=run.id, epoch=1, attempt=1, train_loss=1.0, test_accuracy=0.5))
        db.add(LayerMetric(run_id=run.id, epoch=1, layer=0, layer_name="hidden.0", attempt=1, grad_norm=0.1))
    db.commit()
    rows = client.get(f"/v1/experiments/{experiment_id}/metrics?format=json").json()
    assert len(rows) == 8
    assert list(rows[0])[-2:] == ["model.hidden", "training.init"]
    first = rows[0]
    assert (first["cell"], first["model.hidden"], first["training.init"]) == ("hidden=8, init=auto", "[8]", "auto")
    assert {(row["cell"], row["model.hidden"], row["training.init"]) for row in rows} == {
        ("hidden=8, init=auto", "[8]", "auto"),
        ("hidden=8, init=default", "[8]", "default"),
        ("hidden=2x8, init=auto", "[8,8]", "auto"),
        ("hidden=2x8, init=default", "[8,8]", "default"),
    }
    layers = pd.read_csv(io.StringIO(client.get(f"/v1/experiments/{experiment_id}/layer-metrics?format=csv").text))
    assert set(layers["model.hidden"]) == {"[8]", "[8,8]"}
    assert set(layers["cell"]) == {
        "hidden=8, init=auto",
        "hidden=8, init=default",
        "hidden=2x8, init=auto",
        "hidden=2x8, init=default",
    }
    base = f"/v1/experiments/{experiment_id}/metrics"
    by_init = client.get(base, params={"factor.training.init": "default"}).json()
    assert isinstance(by_init, list), by_init
    assert {row["cell"] for row in by_init} == {"hidden=8, init=default", "hidden=2x8, init=default"}
    both = client.get(base, params={"factor.training.init": "auto", "factor.model.hidden": "[8,8]"}).json()
    assert {row["cell"] for row in both} == {"hidden=2x8, init=auto"} and len(both) == 2
    layer_rows = client.get(f"/v1/experiments/{experiment_id}/layer-metrics?factor.model.hidden=[8]").json()
    assert {row["model.hidden"] for row in layer_rows} == {"[8]"}
    bad_level = client.get(base, params={"factor.training.init": "magic"})
    assert bad_level.status_code == 422
    assert (
        _errors(bad_level)["query.factor.training.init"] == "training.init has no level 'magic'; allowed: auto, default"
    )
    bad_path = client.get(base, params={"factor.training.lr": "0.1"})
    assert bad_path.status_code == 422
    assert "no factor 'training.lr'" in _errors(bad_path)["query.factor.training.lr"]
    # Without factors the cell column is empty and no factor columns follow.
    plain_id = client.post("/v1/experiments", json=small_spec()).json()["id"]
    plain = db.execute(select(Run).where(Run.experiment_id == uuid.UUID(plain_id))).scalars().first()
    assert plain is not None
    db.add(EpochMetric(run_id=plain.id, epoch=1, attempt=1, train_loss=1.0))
    db.commit()
    [plain_row] = client.get(f"/v1/experiments/{plain_id}/metrics?format=json").json()
    assert plain_row["cell"] is None and "model.hidden" not in plain_row


@pytest.mark.parametrize(
    ("example", "labels"),
    [
        (
            "depth_x_norm.json",
            [f"hidden={depth}x32, norm={norm}" for depth in (2, 16) for norm in ("none", "batch")],
        ),
        (
            "architecture.json",
            [
                "model=mlp(hidden=2x64)",
                "model=cnn(channels=16-32,hidden=64,kernel_size=5,pooling=max)",
                "model=rnn(cell=rnn,hidden_size=64,layers=1)",
            ],
        ),
    ],
)
def test_the_remedy_and_architecture_examples_expand_to_their_cells(example: str, labels: list[str]) -> None:
    import json
    from pathlib import Path

    spec = ExperimentSpec.model_validate(
        json.loads((Path(__file__).resolve().parents[2] / "examples" / example).read_text())
    )
    assert [cell.label for cell in expand_cells(spec)] == labels
    assert {cell.spec.model.kind for cell in expand_cells(spec)} == (
        {"mlp", "cnn", "rnn"} if example == "architecture.json" else {"mlp"}
    )


def test_the_example_depth_x_init_is_a_valid_six_cell_design() -> None:
    import json
    from pathlib import Path

    example = json.loads((Path(__file__).resolve().parents[2] / "examples" / "depth_x_init.json").read_text())
    spec = ExperimentSpec.model_validate(example)
    labels = [cell.label for cell in expand_cells(spec)]
    assert labels == [f"hidden={depth}x32, init={init}" for depth in (2, 8, 16) for init in ("auto", "default")]
