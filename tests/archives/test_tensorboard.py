"""TensorBoard export over HTTP: the event files read back with TensorBoard's own reader match the metrics."""

from __future__ import annotations

import importlib.abc
import io
import json
import sys
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.results import conftest as results_fixtures
from tests.results.synthetic_factorial import insert_factorial_experiment

settings = results_fixtures.settings
app = results_fixtures.app
client = results_fixtures.client
db = results_fixtures.db
finished_experiment = results_fixtures.finished_experiment


def _export(client: TestClient, experiment_id: uuid.UUID, folder: Path) -> list[Path]:
    response = client.get(f"/v1/experiments/{experiment_id}/export", params={"format": "tensorboard"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert "tensorboard" in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(folder)
    return sorted(path for path in folder.iterdir() if path.is_dir())


def _read(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _hparams(accumulator: EventAccumulator) -> dict[str, Any]:
    content = accumulator.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values: dict[str, Any] = {}
    for name, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values


def test_every_run_is_a_folder_whose_scalars_are_the_metrics(
    client: TestClient, finished_experiment: uuid.UUID, tmp_path: Path
) -> None:
    metrics = json.loads(client.get(f"/v1/experiments/{finished_experiment}/metrics").content)
    runs = client.get(f"/v1/experiments/{finished_experiment}").json()["runs"]
    folders = _export(client, finished_experiment, tmp_path)
    # Every run, those that never trained an epoch too (their hparams say which they were).
    assert len(folders) == len(runs)
    trained = [folder for folder in folders if "epoch/test_accuracy" in _read(folder).Tags()["scalars"]]
    assert len(trained) == len({row["run_id"] for row in metrics})
    layers = json.loads(client.get(f"/v1/experiments/{finished_experiment}/layer-metrics").content)
    with_layers = 0
    for folder in trained:
        accumulator = _read(folder)
        hparams = _hparams(accumulator)
        run_rows = sorted(
            (row for row in metrics if row["activation"] == hparams["activation"] and row["seed"] == hparams["seed"]),
            key=lambda row: row["epoch"],
        )
        assert run_rows, f"{folder.name} has no run in the metrics"
        accuracy = accumulator.Scalars("epoch/test_accuracy")
        assert [event.step for event in accuracy] == [row["epoch"] for row in run_rows]
        assert [event.value for event in accuracy] == pytest.approx([row["test_accuracy"] for row in run_rows])
        run_id = run_rows[0]["run_id"]
        layer_rows = [row for row in layers if row["run_id"] == run_id]
        for row in layer_rows:
            events = accumulator.Scalars(f"grad_norm/{row['layer']:02d}_{row['layer_name']}")
            assert {event.step: event.value for event in events}[row["epoch"]] == pytest.approx(row["grad_norm"])
        with_layers += bool(layer_rows)
    assert with_layers > 0


def test_the_root_declares_the_hparams_that_tensorboard_compares(
    client: TestClient, db: Session, tmp_path: Path
) -> None:
    experiment_id = insert_factorial_experiment(db)
    folders = _export(client, experiment_id, tmp_path)
    root = _read(tmp_path)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        root.PluginTagToContent("hparams")["_hparams_/experiment"]
    ).experiment
    assert {info.name for info in experiment.hparam_infos} == {"activation", "seed", "model.hidden", "training.lr"}
    assert "epoch/test_accuracy" in {info.name.tag for info in experiment.metric_infos}
    # One folder per (cell, activation, seed), each with its cell's levels as hparams.
    assert len(folders) == 4 * 3 * 4
    levels = {(h["model.hidden"], h["training.lr"]) for h in (_hparams(_read(folder)) for folder in folders)}
    assert levels == {("[16]", "0.001"), ("[16]", "0.01"), ("[16,16,16,16]", "0.001"), ("[16,16,16,16]", "0.01")}


class _Blocked(importlib.abc.MetaPathFinder):
    """An environment without the tensorboard package: importing it fails as when it is not installed."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname == "tensorboard" or fullname.startswith("tensorboard."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@pytest.fixture
def without_tensorboard() -> Iterator[None]:
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "tensorboard"}
    for name in saved:
        del sys.modules[name]
    blocker = _Blocked()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        sys.modules.update(saved)


def test_without_the_extra_the_answer_is_501_naming_it(
    client: TestClient, finished_experiment: uuid.UUID, without_tensorboard: None
) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/export", params={"format": "tensorboard"})
    assert response.status_code == 501
    assert "activation-lab[tensorboard]" in response.json()["detail"]
    # The re-importable archive needs nothing more.
    assert client.get(f"/v1/experiments/{finished_experiment}/export").status_code == 200


def test_an_unknown_format_is_a_422_naming_the_allowed_ones(client: TestClient, finished_experiment: uuid.UUID) -> None:
    response = client.get(f"/v1/experiments/{finished_experiment}/export", params={"format": "tar"})
    assert response.status_code == 422
    assert "zip" in response.text and "tensorboard" in response.text
