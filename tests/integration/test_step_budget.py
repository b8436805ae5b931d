"""A step budget through the real API and a real Celery worker: a training.eval_every factor over steps=6 gives
each cell its own evaluations, one metrics row each after epoch 0, with the steps taken in the step column; the
planned epochs of the progress and of each run count the evaluations."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, train_to_success

pytestmark = pytest.mark.integration


def test_a_step_budget_stores_one_row_per_evaluation(api: httpx.Client, cpu_worker: ManagedProcess) -> None:
    spec = {
        "version": 2,
        "name": "step budget",
        "dataset": {"name": "spirals", "params": {"samples": 300}},
        "model": {"kind": "mlp", "hidden": [8]},
        "activations": ["relu"],
        "seeds": [0],
        "training": {"steps": 6, "batch_size": 64, "lr": 0.01, "schedule": "cosine"},
        "device": "cpu",
        "factors": {"training.eval_every": [4, 6]},
    }
    experiment = train_to_success(api, spec)
    # ceil(6 / 4) + ceil(6 / 6) evaluations, one run each.
    assert experiment["progress"]["total_epochs"] == 3 and experiment["progress"]["finished_epochs"] == 3
    assert "epochs" not in experiment["spec"]["training"]
    rows = api.get(f"/v1/experiments/{experiment['id']}/metrics").json()
    steps = {
        every: [(row["epoch"], row["step"]) for row in rows if row["training.eval_every"] == every] for every in (4, 6)
    }
    assert steps == {4: [(0, 0), (1, 4), (2, 6)], 6: [(0, 0), (1, 6)]}
    runs = api.get(f"/v1/experiments/{experiment['id']}").json()["runs"]
    planned = {run["cell"]: api.get(f"/v1/runs/{run['id']}").json()["epochs_planned"] for run in runs}
    assert planned == {"eval_every=4": 2, "eval_every=6": 1}
