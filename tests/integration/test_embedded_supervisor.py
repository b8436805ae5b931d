"""`actlab serve` supervises its worker: a killed worker is restarted (and /readyz says 503 until it is
back), its run finishes with every epoch once; a killed service leaves no worker behind."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import spirals_spec, wait_for_experiment, wait_until
from tests.integration.test_embedded import EmbeddedService

pytestmark = pytest.mark.integration

EPOCHS = 8


@pytest.fixture
def service(tmp_path: Path) -> Iterator[EmbeddedService]:
    embedded = EmbeddedService(tmp_path)
    try:
        yield embedded
    finally:
        if embedded.process is not None:
            embedded.process.stop(timeout=30)


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


def _readiness(url: str) -> tuple[int, dict[str, object]] | None:
    try:
        response = httpx.get(f"{url}/readyz", timeout=10)
    except httpx.TransportError:
        return None
    return response.status_code, response.json()


def _wait_ready(url: str) -> dict[str, object]:
    answer = wait_until(
        lambda: (reply := _readiness(url)) is not None and reply[0] == 200 and reply, timeout=120, what="/readyz 200"
    )
    return answer[1]


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
    service: EmbeddedService,
) -> None:
    service.start()
    ready = _wait_ready(service.url)
    assert ready["checks"]["worker"]["ok"] is True  # type: ignore[index]
    worker_pid = service.worker_pid()
    with service.client() as api:
        experiment_id = _start_a_long_run(api)
        # kill -9 of the worker's main process and its pool, at once (its process group).
        os.killpg(worker_pid, signal.SIGKILL)

        down = wait_until(
            lambda: (reply := _readiness(service.url)) is not None and reply[0] == 503 and reply,
            timeout=60,
            interval=0.02,
            what="/readyz to answer 503 after the worker was killed",
        )
        assert down[1]["checks"]["worker"]["ok"] is False, down  # type: ignore[index]
        back = _wait_ready(service.url)
        detail = str(back["checks"]["worker"]["detail"])  # type: ignore[index]
        assert str(worker_pid) not in detail, back
        log = service.process.log() if service.process else ""
        assert f"the worker process {worker_pid} was killed by SIGKILL; restarting it in" in log, log

        finished = wait_for_experiment(api, experiment_id, timeout=240)
        assert finished["status"] == "succeeded", finished
        run = finished["runs"][0]
        assert (run["attempt"], run["epochs_completed"]) == (2, EPOCHS), run
        rows = api.get(f"/v1/experiments/{experiment_id}/metrics").json()
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))


def test_a_worker_whose_service_is_killed_exits_with_its_pool(service: EmbeddedService) -> None:
    serve = service.start()
    _wait_ready(service.url)
    worker_pid = service.worker_pid()
    pool = _children(worker_pid)
    assert pool, "the worker has no pool processes"
    worker_tree = [worker_pid, *pool]
    try:
        with service.client() as api:
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
