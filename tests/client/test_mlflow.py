"""Mirroring into a real ``mlflow server`` (SQLite backend, loopback), read back with ``MlflowClient``."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient

from actlab import Client
from tests.client.test_client import _forwarding
from tests.fixtures import free_port

# A hang guard, not a timing margin: the server is polled until it answers /health.
SERVER_START_GUARD_SECONDS = 180


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--workers",
        "1",
    ]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_GUARD_SECONDS
    try:
        while True:
            assert process.poll() is None, (folder / "server.log").read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health"
            time.sleep(0.5)
        yield url
    finally:
        import os
        import signal

        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _child_runs(mlflow: MlflowClient, experiment_id: str) -> list:  # type: ignore[type-arg]
    return mlflow.search_runs([experiment_id], filter_string="tags.`actlab.kind` = 'run'", max_results=1000)


def test_mirror_logs_every_run_and_a_second_mirror_duplicates_nothing(
    client: TestClient, finished_experiment: uuid.UUID, mlflow_server: str
) -> None:
    service = Client("http://service", transport=_forwarding(client))
    experiment = service.experiment(str(finished_experiment))
    detail = experiment.status()
    metrics = experiment.metrics()

    summary = experiment.to_mlflow(mlflow_server, "mirror test")
    mlflow = MlflowClient(tracking_uri=mlflow_server)
    runs = _child_runs(mlflow, summary.mlflow_experiment_id)
    assert summary.runs_created == len(detail["runs"]) == len(runs)
    for run in runs:
        tags = run.data.tags
        assert tags["actlab.experiment_id"] == str(finished_experiment)
        assert tags["actlab.spec_hash"] == detail["spec_hash"]
        assert tags["mlflow.parentRunId"] == summary.parent_run_id
        assert tags["actlab.report_url"].endswith(f"/experiments/{finished_experiment}")
        rows = metrics[metrics["run_id"] == tags["actlab.run_id"]].sort_values("epoch")
        assert run.data.params["activation"] == rows["activation"].iloc[0] if not rows.empty else True
        assert run.data.params["spec.dataset.name"] == detail["spec"]["dataset"]["name"]
        history = sorted(mlflow.get_metric_history(run.info.run_id, "test_accuracy"), key=lambda m: m.step)
        assert [m.step for m in history] == rows["epoch"].tolist()
        assert [m.value for m in history] == pytest.approx(rows["test_accuracy"].tolist())
    artifacts = {item.path for item in mlflow.list_artifacts(summary.parent_run_id)}
    assert {"results.csv", "recommendation.json", "spec.json", "plots"} <= artifacts

    again = experiment.to_mlflow(mlflow_server, "mirror test", artifacts=False)
    assert (again.runs_created, again.runs_found, again.metrics_logged) == (0, len(runs), 0)
    assert again.parent_run_id == summary.parent_run_id
    assert len(_child_runs(mlflow, summary.mlflow_experiment_id)) == len(runs)
    history = mlflow.get_metric_history(runs[0].info.run_id, "test_accuracy")
    assert len(history) == len({m.step for m in history})


def test_the_cli_mirrors_and_reports_what_it_did(
    client: TestClient, finished_experiment: uuid.UUID, mlflow_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import build_parser
    from app.cli.interop import mirror_mlflow

    arguments = build_parser().parse_args(
        ["mirror", "mlflow", str(finished_experiment), "--tracking-uri", mlflow_server, "--experiment-name", "cli"]
    )
    arguments.url = "http://service"
    assert mirror_mlflow(arguments, transport=_forwarding(client)) == 0
    assert "runs created" in capsys.readouterr().out
    mlflow = MlflowClient(tracking_uri=mlflow_server)
    found = mlflow.get_experiment_by_name("cli")
    assert found is not None and _child_runs(mlflow, found.experiment_id)
