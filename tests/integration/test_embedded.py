"""Embedded mode for real: `actlab serve` with no environment set (SQLite file, folder broker, one
worker child), driven by `actlab submit --wait` over HTTP."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, free_port, spirals_spec, wait_for_experiment, wait_until

pytestmark = pytest.mark.integration


def _bare_environment(config_home: Path) -> dict[str, str]:
    """This machine's environment without any service setting (the embedded defaults apply), and a
    config folder of the test's own, where `actlab serve` keeps the local key the CLI reads."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ACTLAB_") and key not in ("DATABASE_URL", "BROKER_URL")
    }
    environment.update({"PYTHONUNBUFFERED": "1", "ACTLAB_TORCH_THREADS": "1", "XDG_CONFIG_HOME": str(config_home)})
    return environment


class EmbeddedService:
    """`actlab serve` in a directory of its own."""

    def __init__(self, directory: Path, **settings: str) -> None:
        self.directory = directory
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0
        self.process: ManagedProcess | None = None
        self.config_home = directory / "config"

    def client(self) -> httpx.Client:
        """An HTTP client with the local admin key that `actlab serve` created for this URL."""
        from app.auth.local import read_local_key

        key = read_local_key(self.url, path=self.config_home / "actlab" / "credentials.json")
        assert key, "actlab serve stored no local key"
        return httpx.Client(base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {key}"})

    def start(self) -> ManagedProcess:
        self.starts += 1
        self.process = ManagedProcess(
            name="serve",
            command=[sys.executable, "-m", "app.cli", "serve", f"--port={self.port}"],
            log_path=self.directory / f"serve-{self.starts}.log",
            environment={**_bare_environment(self.config_home), **self.settings},
            cwd=self.directory,
        ).start()
        process = self.process

        def healthy() -> bool:
            assert process.alive(), process.log()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=90, what="`actlab serve` to answer /healthz")
        return process

    def worker_pid(self) -> int:
        assert self.process is not None
        found = wait_until(
            lambda: re.search(r"worker process (\d+)", self.process.log() if self.process else ""),
            timeout=30,
            what="the worker's pid in the log",
        )
        return int(found.group(1))

    def stop(self) -> int | None:
        """SIGTERM, as a service manager would; returns the exit status."""
        assert self.process is not None and self.process.process is not None
        self.process.process.send_signal(signal.SIGTERM)
        try:
            return self.process.process.wait(timeout=90)
        finally:
            self.process.stop(timeout=5)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedService]:
    service = EmbeddedService(tmp_path)
    try:
        yield service
    finally:
        if service.process is not None:
            service.process.stop(timeout=30)


def test_serve_then_submit_and_wait_prints_the_results_table(embedded: EmbeddedService) -> None:
    embedded.start()
    worker_pid = embedded.worker_pid()
    assert "created a local admin API key" in embedded.process.log() if embedded.process else False
    spec_path = embedded.directory / "spec.json"
    spec = spirals_spec(name="embedded", epochs=2, activations=["relu", "tanh"], seeds=[0, 1])
    spec_path.write_text(json.dumps(spec))

    submitted = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(spec_path), "--wait", "--poll=0.5", f"--url={embedded.url}"],
        capture_output=True,
        text=True,
        timeout=240,
        env=_bare_environment(embedded.config_home),
        check=False,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "succeeded" in submitted.stdout
    # The per-activation results table: rank, activation, n seeds, mean of the final test accuracy, ...
    table = submitted.stdout[submitted.stdout.index("rank  activation") :]
    assert re.search(r"^\d\s+relu\s+2\s+0\.\d+\s", table, re.MULTILINE), submitted.stdout
    assert re.search(r"^\d\s+tanh\s+2\s+0\.\d+\s", table, re.MULTILINE), submitted.stdout

    experiment_id = re.search(r"experiment ([0-9a-f-]{36})", submitted.stdout)
    assert experiment_id is not None
    with embedded.client() as api:
        rows = api.get(f"/v1/experiments/{experiment_id.group(1)}/metrics").json()
    # 2 activations x 2 seeds x (epoch 0 at initialisation + 2 trained epochs).
    assert len(rows) == 12 and len({(row["run_id"], row["epoch"]) for row in rows}) == 12
    assert (embedded.directory / "actlab.db").is_file()
    # A quiet start: no root warning for the service's own worker (CI runs as root), no broker-host notice.
    log = embedded.process.log() if embedded.process else ""
    assert "SecurityWarning" not in log and "superuser privileges" not in log
    assert "No hostname was supplied" not in log

    assert embedded.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


def test_a_run_interrupted_by_stopping_the_service_finishes_after_the_next_start(
    embedded: EmbeddedService,
) -> None:
    embedded.start()
    epochs = 16
    spec = spirals_spec(name="interrupted", epochs=epochs, samples=12000, hidden=[64, 64])
    with embedded.client() as api:
        experiment_id = api.post("/v1/experiments", json=spec).json()["id"]
        wait_until(
            lambda: api.get(f"/v1/experiments/{experiment_id}").json()["runs"][0]["epochs_completed"] >= 2,
            timeout=120,
            interval=0.05,
            what="the run to be past its second epoch",
        )
    assert embedded.stop() == 0

    embedded.start()
    with embedded.client() as api:
        finished = wait_for_experiment(api, experiment_id, timeout=180)
        assert finished["status"] == "succeeded", finished
        run = finished["runs"][0]
        assert run["attempt"] == 2 and run["epochs_completed"] == epochs
        rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert [row["epoch"] for row in rows] == list(range(0, epochs + 1))


def test_the_api_answers_while_the_worker_warms_up_and_a_run_submitted_meanwhile_waits_for_its_dataset(
    tmp_path: Path,
) -> None:
    """The warm-up (worker/warm_up.py) is held mid-way by the dataset cache's lock, which this test takes first:
    /healthz answers meanwhile, the run submitted then trains once the warm-up has generated its dataset, and
    it records the same numbers as the same experiment trained by the warm worker."""
    from app.config import Settings
    from app.spec import DatasetSpec
    from worker.training.dataset_cache import DatasetCache
    from worker.training.datasets import disk_cache_entry

    data_dir = tmp_path / "data"
    # One pool process: both experiments train as one stack, so their numbers must agree exactly.
    service = EmbeddedService(
        tmp_path, ACTLAB_WORKER_WARM_UP_DATASET="spirals", ACTLAB_DATA_DIR=str(data_dir), ACTLAB_WORKER_CONCURRENCY="1"
    )
    entry = disk_cache_entry(DatasetSpec(name="spirals"), settings=Settings(data_dir=data_dir))
    assert entry is not None
    entry.parent.mkdir(parents=True)
    spec = spirals_spec(name="warm-up", epochs=2, activations=["relu", "tanh"])
    spec["dataset"] = {"name": "spirals"}  # the warm-up's dataset, default parameters
    lock = DatasetCache.lock_path(entry).open("a+b")
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    try:
        service.start()  # waits for /healthz
        assert service.process is not None
        wait_until(
            lambda: "warming up the worker" in service.process.log() if service.process else False,
            timeout=120,
            what="the worker's warm-up to start",
        )
        with service.client() as api:
            # The warm-up waits for the lock this test holds: it is still running.
            assert api.get("/healthz").status_code == 200
            assert api.get("/readyz").status_code == 503
            first = api.post("/v1/experiments", json=spec).json()["id"]
            assert {run["status"] for run in api.get(f"/v1/experiments/{first}").json()["runs"]} == {"queued"}
            assert not entry.exists()
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
            assert wait_for_experiment(api, first, timeout=180)["status"] == "succeeded"
            assert "worker warmed up" in service.process.log()
            second = api.post("/v1/experiments", json=spec).json()["id"]
            assert wait_for_experiment(api, second, timeout=180)["status"] == "succeeded"

            def numbers(experiment_id: str) -> list[tuple[Any, ...]]:
                rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
                return sorted(
                    (row["activation"], row["seed"], row["epoch"], row["train_loss"], row["test_accuracy"])
                    for row in rows
                )

            assert len(numbers(first)) == 6
            assert numbers(first) == numbers(second)
    finally:
        lock.close()
        if service.process is not None:
            service.process.stop(timeout=30)
    assert entry.is_file()


def test_both_worker_processes_train_a_two_stack_grid_at_the_same_time(tmp_path: Path) -> None:
    # Two pool processes and a grid of two stacks: the second process starts its stack while the first trains
    # (it is handed a task of a run the first stack left queued), observed by both stacks' runs running at once.
    embedded = EmbeddedService(tmp_path, ACTLAB_WORKER_CONCURRENCY="2")
    try:
        _train_two_stacks_at_once(embedded)
    finally:
        if embedded.process is not None:
            embedded.process.stop(timeout=30)


def _train_two_stacks_at_once(embedded: EmbeddedService) -> None:
    embedded.start()
    spec = spirals_spec(
        name="two stacks", epochs=200, samples=6000, hidden=[64, 64], activations=["relu", "tanh"], seeds=[0, 1]
    )
    with embedded.client() as api:
        response = api.post("/v1/experiments", json=spec)
        assert response.status_code == 202, response.text
        experiment_id = response.json()["id"]

        def both_stacks_training() -> set[str] | None:
            experiment = api.get(f"/v1/experiments/{experiment_id}").json()
            assert experiment["status"] in ("queued", "running"), experiment
            runs = [api.get(f"/v1/runs/{run['id']}").json() for run in experiment["runs"]]
            training = {run["stack_id"] for run in runs if run["status"] == "running" and run["epochs_completed"] >= 1}
            return training if len(training) == 2 and None not in training else None

        stacks = wait_until(both_stacks_training, timeout=180, interval=0.2, what="both stacks to train at once")
        assert len(stacks) == 2
        assert api.post(f"/v1/experiments/{experiment_id}/cancel").status_code == 200
        experiment = wait_for_experiment(api, experiment_id, timeout=90)
    assert experiment["status"] == "cancelled"
    assert all(run["epochs_completed"] < 200 for run in experiment["runs"])
