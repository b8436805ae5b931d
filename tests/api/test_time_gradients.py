"""The gradient through time over HTTP: runs trained by the worker's own code, read back through the API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import make_engine
from tests.api.conftest import RecordingDispatcher, small_spec
from worker.runner import execute_run


def _train(client: TestClient, dispatcher: RecordingDispatcher, settings: Settings, tmp_path: Path) -> str:
    """An experiment whose cells are the Elman cell and a GRU, every run trained by the ordinary runner."""
    spec = small_spec(
        version=2,
        model={"kind": "rnn", "cell": "rnn", "hidden_size": 8, "head_hidden": 8},
        activations=["sigmoid", "tanh"],
        seeds=[0],
        training={"epochs": 2, "batch_size": 256},
        factors={"model.cell": ["rnn", "gru"]},
    )
    response = client.post("/v1/experiments", json=spec)
    assert response.status_code == 202, response.text
    worker_settings = settings.model_copy(
        update={"checkpoint_dir": tmp_path / "checkpoints", "database_retry_seconds": 0, "stack_runs": False}
    )
    engine = make_engine(settings.database_url)
    try:
        for run_id in dispatcher.run_ids:
            outcome = execute_run(
                run_id=run_id, worker_host="w1", task_id="t1", engine=engine, settings=worker_settings
            )
            assert outcome.status is not None and outcome.status.value == "succeeded"
    finally:
        engine.dispose()
    return str(response.json()["id"])


def test_the_api_serves_per_step_norms_flags_and_the_not_measured_note(
    client: TestClient, dispatcher: RecordingDispatcher, settings: Settings, tmp_path: Path
) -> None:
    experiment_id = _train(client, dispatcher, settings, tmp_path)
    base = f"/v1/experiments/{experiment_id}"

    runs = client.get(f"{base}/runs").json()
    runs = runs["items"] if isinstance(runs, dict) else runs
    notes = {run["cell"]: run["time_gradients"] for run in runs}
    assert notes["cell=rnn"] == "measured"
    assert notes["cell=gru"].startswith("not measured: nn.GRU/nn.LSTM")

    layers = client.get(f"{base}/layer-metrics").json()
    traced = [row for row in layers if row["time_grad_norms"] is not None]
    # digits: 8 rows of 8 pixels, one norm per step of the one Elman layer, for both activations and for
    # epoch 0 (at initialisation) and the 2 trained epochs.
    assert {(row["cell"], row["layer_name"]) for row in traced} == {("cell=rnn", "recurrent1")}
    assert len(traced) == 2 * 3 and all(len(row["time_grad_norms"]) == 8 for row in traced)
    assert sorted({row["epoch"] for row in traced}) == [0, 1, 2]

    epochs = client.get(f"{base}/metrics").json()
    for row in epochs:
        if row["cell"] == "cell=gru":
            assert row["time_grad_norm_ratio"] is None and row["time_gradient_flag"] is None
            continue
        (layer,) = [layer for layer in traced if (layer["run_id"], layer["epoch"]) == (row["run_id"], row["epoch"])]
        norms = layer["time_grad_norms"]
        assert row["time_grad_norm_ratio"] == norms[0] / norms[-1]
        assert row["time_grad_log_slope"] is not None

    csv_layers = pd.read_csv(io.StringIO(client.get(f"{base}/layer-metrics?format=csv").text))
    from_csv = [json.loads(text) for text in csv_layers["time_grad_norms"].dropna()]
    assert sorted(map(tuple, from_csv)) == sorted(tuple(row["time_grad_norms"]) for row in traced)

    diagnostics = client.get(f"{base}/diagnostics").json()
    by_cell = {(row["cell"], row["activation"]): row for row in diagnostics}
    assert by_cell[("cell=rnn", "tanh")]["time_gradients"] == "measured"
    assert by_cell[("cell=rnn", "tanh")]["vanishing_over_time"] in (True, False)
    assert by_cell[("cell=rnn", "tanh")]["time_gradient_ratio_last_epoch"] > 0
    assert by_cell[("cell=gru", "tanh")]["time_gradients"].startswith("not measured")
    assert by_cell[("cell=gru", "tanh")]["vanishing_over_time"] is None

    report = client.get(f"/experiments/{experiment_id}")
    assert report.status_code == 200
    assert "vanishing over time" in report.text and "not measured: nn.GRU/nn.LSTM" in report.text


def test_an_archive_keeps_the_gradient_through_time(
    client: TestClient, dispatcher: RecordingDispatcher, settings: Settings, tmp_path: Path
) -> None:
    experiment_id = _train(client, dispatcher, settings, tmp_path)
    archive = client.get(f"/v1/experiments/{experiment_id}/export").content
    imported = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert imported.status_code in (200, 201), imported.text
    copy_id = imported.json()["id"]

    def seen(experiment: str) -> tuple[list[object], list[object], list[object]]:
        base = f"/v1/experiments/{experiment}"
        runs = sorted(
            (run["cell"], run["activation"], run["time_gradients"]) for run in client.get(f"{base}/runs").json()
        )
        epochs = sorted(
            (row["cell"], row["activation"], row["epoch"], row["time_grad_norm_ratio"], row["time_gradient_flag"])
            for row in client.get(f"{base}/metrics").json()
        )
        layers = sorted(
            (row["cell"], row["activation"], row["epoch"], row["layer"], json.dumps(row["time_grad_norms"]))
            for row in client.get(f"{base}/layer-metrics").json()
        )
        return list(runs), list(epochs), list(layers)

    assert seen(copy_id) == seen(experiment_id)
