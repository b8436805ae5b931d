"""How each run trained, over HTTP: the run schema, the archive round trip and the report's run table."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.config import Settings
from app.db import make_engine
from tests.api.conftest import RecordingDispatcher, small_spec
from worker.stacked_runner import execute_runs

STACKED_BECAUSE = "on a CPU a small MLP is bound by per-step overhead, which a stacked grid shares among its members"


def _train_stacked(client: TestClient, dispatcher: RecordingDispatcher, settings: Settings, tmp_path: Path) -> str:
    response = client.post("/v1/experiments", json=small_spec(training={"epochs": 1}))
    assert response.status_code == 202, response.text
    worker_settings = settings.model_copy(
        update={"checkpoint_dir": tmp_path / "checkpoints", "database_retry_seconds": 0, "worker_concurrency": 1}
    )
    engine = make_engine(settings.database_url)
    try:
        batch = execute_runs(
            run_ids=dispatcher.run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=worker_settings
        )
    finally:
        engine.dispose()
    assert len(batch.outcomes) == 4
    return str(response.json()["id"])


def test_runs_say_how_they_trained_and_an_archive_keeps_it(
    client: TestClient, dispatcher: RecordingDispatcher, settings: Settings, tmp_path: Path
) -> None:
    experiment_id = _train_stacked(client, dispatcher, settings, tmp_path)
    runs = client.get(f"/v1/experiments/{experiment_id}/runs").json()
    assert {(run["training_path"], run["stack_size"], run["stacking_reason"]) for run in runs} == {
        ("stacked", 4, STACKED_BECAUSE)
    }
    assert len({run["stack_id"] for run in runs}) == 1
    single = client.get(f"/v1/runs/{runs[0]['id']}").json()
    assert single["stack_id"] == runs[0]["stack_id"]

    report = client.get(f"/experiments/{experiment_id}").text
    assert '<th class="text">training</th>' in report and "stacked (4 runs)" in report

    archive = client.get(f"/v1/experiments/{experiment_id}/export").content
    imported = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert imported.status_code in (200, 201), imported.text
    copies = client.get(f"/v1/experiments/{imported.json()['id']}/runs").json()
    assert sorted(
        (run["activation"], run["seed"], run["stack_id"], run["stack_size"], run["stacking_reason"]) for run in copies
    ) == sorted(
        (run["activation"], run["seed"], run["stack_id"], run["stack_size"], run["stacking_reason"]) for run in runs
    )
