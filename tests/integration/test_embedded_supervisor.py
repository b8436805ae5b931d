"""`actlab serve` supervises its worker: a killed worker is restarted (and /readyz says 503 until it is
back), its run finishes with every epoch once; a killed service leaves no worker behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import supervisor
from app.cli.supervisor import EmbeddedWorker
from app.config import Settings
from tests.integration import test_embedded
from tests.integration.conftest import spirals_spec, wait_for_experiment, wait_until
from tests.integration.test_embedded import EmbeddedService

pytestmark = pytest.mark.integration

# The fixture: `actlab serve` in the test's directory, stopped at the end.
embedded = test_embedded.embedded

EPOCHS = 8


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    return _state(pid) not in (None, "Z", "X")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _readiness(url: str, status: int) -> dict[str, Any] | None:
    """The body of GET /readyz when it answers ``status``, else None."""
    try:
        response = httpx.get(f"{url}/readyz", timeout=10)
    except httpx.TransportError:
        return None
    body: dict[str, Any] = response.json()
    return body if response.status_code == status else None


def _wait_ready(url: str) -> dict[str, Any]:
    return wait_until(lambda: _readiness(url, 200), timeout=120, what="/readyz 200")


def _start_a_long_run(api: httpx.Client) -> str:
    spec = spirals_spec(name="supervised", epochs=EPOCHS, samples=6000, hidden=[64, 64])
    experiment_id: str = api.post("/v1/experiments", json=spec).json()["id"]
    wait_until(
        lambda: api.get(f"/v1/experiments/{experiment_id}").json()["runs"][0]["epochs_completed"] >= 1,
        timeout=120,
        interval=0.05,
        what="the run to finish its first epoch",
    )
    return experiment_id


def test_a_killed_worker_is_restarted_readyz_says_so_and_its_run_finishes_with_every_epoch_once(
    embedded: EmbeddedService,
) -> None:
    embedded.start()
    ready = _wait_ready(embedded.url)
    assert ready["checks"]["worker"]["ok"] is True, ready
    worker_pid = embedded.worker_pid()
    with embedded.client() as api:
        experiment_id = _start_a_long_run(api)
        # kill -9 of the worker's main process and its pool, at once (its process group).
        os.killpg(worker_pid, signal.SIGKILL)

        down = wait_until(
            lambda: _readiness(embedded.url, 503),
            timeout=60,
            interval=0.02,
            what="/readyz to answer 503 after the worker was killed",
        )
        assert down["checks"]["worker"]["ok"] is False, down
        assert down["checks"]["database"]["ok"] is True, down
        back = _wait_ready(embedded.url)
        assert str(worker_pid) not in back["checks"]["worker"]["detail"], back
        log = embedded.process.log() if embedded.process else ""
        assert f"the worker process {worker_pid} was killed by SIGKILL; restarting it in" in log, log

        finished = wait_for_experiment(api, experiment_id, timeout=240)
        assert finished["status"] == "succeeded", finished
        run = finished["runs"][0]
        assert (run["attempt"], run["epochs_completed"]) == (2, EPOCHS), run
        rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert [row["epoch"] for row in rows] == list(range(0, EPOCHS + 1))


def test_a_worker_whose_service_is_killed_exits_with_its_pool(embedded: EmbeddedService) -> None:
    serve = embedded.start()
    _wait_ready(embedded.url)
    worker_pid = embedded.worker_pid()
    pool = _children(worker_pid)
    assert pool, "the worker has no pool processes"
    worker_tree = [worker_pid, *pool]
    try:
        with embedded.client() as api:
            # A pool process is busy training when the service dies.
            _start_a_long_run(api)
        os.kill(serve.pid, signal.SIGKILL)
        wait_until(
            lambda: not any(_running(pid) for pid in worker_tree),
            timeout=60,
            what=f"the worker {worker_pid} and its pool {pool} to exit after `actlab serve` was killed",
        )
    finally:
        for pid in worker_tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_that_keeps_dying_is_restarted_up_to_the_limit_then_left_down(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start_a_stand_in(**_: Any) -> subprocess.Popen[bytes]:
        # A process that lives until it is killed stands in for `actlab worker`.
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        started.append(process)
        return process

    monkeypatch.setattr(supervisor, "start_worker_process", start_a_stand_in)
    settings = Settings(worker_restart_limit=1, worker_restart_backoff_seconds=0.01)
    worker = EmbeddedWorker(settings=settings, concurrency=1, loglevel="info")
    try:
        first = worker.start()
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: worker.pid != first and worker.pid, timeout=30, what="the restarted worker")
        os.kill(second, signal.SIGKILL)

        def given_up() -> tuple[bool, str] | None:
            check = worker.check()
            return check if "not restarted" in check[1] else None

        ready, reason = wait_until(given_up, timeout=30, what="the supervisor to give up")
    finally:
        worker.stop(timeout=5)
    assert ready is False
    assert f"the worker process {second} was killed by SIGKILL; not restarted" in reason
    assert "ACTLAB_WORKER_RESTART_LIMIT" in reason
    assert len(started) == 2
    printed = capsys.readouterr().err
    assert (
        f"the worker process {first} was killed by SIGKILL; restarting it in 0.01 s (restart 1 of at most 1" in printed
    )
