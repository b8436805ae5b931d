"""A version-2 spec with optimiser internals and after-epoch train metrics, through the real API and a real Celery
worker: a training.betas factor trains each cell with its own betas (stacked within the cell), and every metrics
row, in JSON, CSV and Parquet, says how its train metrics were measured."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from tests.api.conftest import parquet_rows
from tests.integration.conftest import ManagedProcess, train_to_success

pytestmark = pytest.mark.integration


def test_betas_and_after_epoch_train_metrics_reach_the_stored_rows(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = {
        "version": 2,
        "name": "optimiser internals",
        "dataset": {"name": "spirals", "params": {"samples": 300}},
        "model": {"kind": "mlp", "hidden": [16]},
        "activations": ["relu", "tanh"],
        "seeds": [0],
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.01, "betas": [0.5, 0.9], "train_metrics": "after_epoch"},
        "device": "cpu",
        "factors": {"training.betas": [[0.9, 0.999], [0.5, 0.9]]},
    }
    experiment = train_to_success(api, spec)
    path = f"/v1/experiments/{experiment['id']}/metrics"

    rows = api.get(path).json()
    assert len(rows) == 2 * 2 * (1 + 2) and {row["train_metrics"] for row in rows} == {"after_epoch"}
    final = {(row["activation"], row["training.betas"]): row for row in rows if row["epoch"] == 2}
    # The betas changed the training: each activation ends elsewhere in its two cells.
    for activation in ("relu", "tanh"):
        assert final[(activation, "[0.9,0.999]")]["train_loss"] != final[(activation, "[0.5,0.9]")]["train_loss"]

    table = list(csv.DictReader(io.StringIO(api.get(path, params={"format": "csv"}).text)))
    assert [row["train_metrics"] for row in table] == ["after_epoch"] * len(rows)
    parquet = parquet_rows(api.get(path, params={"format": "parquet"}).content)
    assert [row["train_metrics"] for row in parquet] == ["after_epoch"] * len(rows)
    runs = api.get(f"/v1/experiments/{experiment['id']}").json()["runs"]
    assert {run["cell"] for run in runs} == {"betas=[0.9,0.999]", "betas=[0.5,0.9]"}
    # A small MLP on a CPU stacks: each cell's two runs as one stack, with the cell's betas.
    assert {api.get(f"/v1/runs/{run['id']}").json()["training_path"] for run in runs} == {"stacked"}
