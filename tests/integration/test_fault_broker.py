"""Redis restarted in the middle of a run, on a private redis-server without persistence (the shared one on
6379 is left alone): the worker and the API reconnect, the running run completes, and the queued run whose
message the restart lost is sent again by the reconciler."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, _create_admin_key, free_port, wait_until
from tests.integration.lanes import Lane, PrivateRedis, open_lane, slow_spec, tiny_spec, worker_log_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker_lane(stack: Stack) -> Iterator[tuple[Lane, PrivateRedis, httpx.Client]]:
    """A lane on a private Redis, with a worker and an API of its own."""
    server = PrivateRedis(workdir=stack.workdir).start()
    try:
        with open_lane(stack, "broker", broker_url=server.url) as lane:
            lane.worker("w1")
            port = free_port()
            api = stack.spawn(
                "broker-api",
                [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", f"--port={port}"],
                **lane.environment(),
            )
            headers = {"Authorization": f"Bearer {_create_admin_key(lane.database_url)}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as client:

                def healthy() -> bool:
                    assert api.alive(), api.log()
                    try:
                        return client.get("/healthz").status_code == 200
                    except httpx.TransportError:
                        return False

                wait_until(healthy, timeout=60, what="the lane's API")
                try:
                    yield lane, server, client
                finally:
                    api.stop()
    finally:
        server.kill()


def _wait_for_success(client: httpx.Client, run_id: str) -> dict[str, Any]:
    return wait_until(
        lambda: (run := client.get(f"/v1/runs/{run_id}").json())["status"] == "succeeded" and run,
        timeout=150,
        interval=0.2,
        what=f"run {run_id} to succeed",
    )


def test_a_redis_restart_mid_run_lets_the_run_finish_and_the_lost_queued_run_is_sent_again(
    broker_lane: tuple[Lane, PrivateRedis, httpx.Client],
) -> None:
    lane, server, client = broker_lane
    # Two experiments of one run each: the worker (one process) trains the first while the second waits in Redis.
    submitted = []
    for name in ("redis restarted: training", "redis restarted: waiting"):
        response = client.post("/v1/experiments", json=slow_spec(name=name, epochs=12))
        assert response.status_code == 202, response.text
        submitted.append(response.json())
    training_id, waiting_id = (experiment["runs"][0]["id"] for experiment in submitted)

    def first_mid_training_second_waiting() -> bool:
        assert client.get(f"/v1/runs/{waiting_id}").json()["status"] == "queued"
        training = client.get(f"/v1/runs/{training_id}").json()
        return training["status"] == "running" and training["epochs_completed"] >= 2

    wait_until(first_mid_training_second_waiting, timeout=90, interval=0.1, what="the first run mid-training")
    server.kill()
    assert client.get("/readyz").status_code == 503
    time.sleep(3)  # an outage of a few seconds, as a Redis restart takes
    server.start()

    runs = {run_id: _wait_for_success(client, run_id) for run_id in (training_id, waiting_id)}
    # The run in progress never stopped; the waiting one was sent again and trained once.
    assert (runs[training_id]["attempt"], runs[waiting_id]["attempt"]) == (1, 1)
    for experiment in submitted:
        rows = client.get(f"/v1/experiments/{experiment['id']}/metrics").json()
        assert [row["epoch"] for row in rows] == list(range(0, 13))
    resent = [
        line
        for line in worker_log_lines(lane.worker("w1"))
        if line.get("run_id") == waiting_id and "no longer in the broker" in line["message"]
    ]
    assert resent

    # The API reconnected too: a new submission is queued and trained.
    assert client.get("/readyz").status_code == 200
    after = client.post("/v1/experiments", json=tiny_spec("after the restart"))
    assert after.status_code == 202, after.text
    _wait_for_success(client, after.json()["runs"][0]["id"])
