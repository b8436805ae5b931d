"""PostgreSQL unreachable for a few seconds while a worker writes metrics: a TCP proxy between the worker and
the shared PostgreSQL (left running) drops every connection and refuses new ones, then lets them through again.
The writes are retried, the run completes in its first attempt, nothing is lost or written twice. The same lane
checks `actlab maintain` (its worker runs no maintenance passes)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.conftest import REDIS_URL, Stack, wait_until
from tests.integration.lanes import CuttableProxy, Lane, open_lane, slow_spec, tiny_spec, worker_log_lines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_lane(stack: Stack) -> Iterator[tuple[Lane, CuttableProxy]]:
    """A lane whose worker reaches PostgreSQL through a proxy that can be cut."""
    proxy = CuttableProxy()
    try:
        with open_lane(
            stack,
            "database",
            broker_url=REDIS_URL,
            ACTLAB_MAINTENANCE_INTERVAL_SECONDS="0",
            ACTLAB_RUN_STALE_SECONDS="60",
        ) as lane:
            lane.start_worker("w1", DATABASE_URL=proxy.url_for(lane.database_url))
            yield lane, proxy
    finally:
        proxy.close()


def test_metric_writes_ride_out_a_database_outage_without_losing_or_repeating_an_epoch(
    database_lane: tuple[Lane, CuttableProxy],
) -> None:
    lane, proxy = database_lane
    worker = lane.worker("w1")
    experiment_id, (run_id,) = lane.submit(slow_spec(name="database outage", epochs=12))
    lane.wait_until_training(run_id, epochs=2)

    def retries_logged() -> list[dict[str, object]]:
        return [
            line
            for line in worker_log_lines(worker)
            if line.get("run_id") == str(run_id) and "database unreachable" in str(line["message"])
        ]

    # The outage lasts until the worker has met it: a connection refused and a write retried, however slow
    # the machine is (a fixed outage could end before the next epoch's write on a loaded machine).
    proxy.cut()
    wait_until(
        lambda: proxy.refused > 0 and retries_logged(),
        timeout=120,
        interval=0.1,
        what="the worker to retry a write through the outage",
    )
    proxy.restore()

    run = lane.wait_for_run(run_id, timeout=120)
    assert (run.status, run.attempt, run.epochs_completed) == ("succeeded", 1, 12), run.error
    assert [(row.epoch, row.attempt) for row in lane.epochs(run_id)] == [(epoch, 1) for epoch in range(0, 13)]
    assert retries_logged(), worker.log()[-3000:]
    assert lane.experiment(experiment_id).status == "succeeded"


def test_actlab_maintain_sends_the_runs_an_api_stored_but_never_enqueued(
    database_lane: tuple[Lane, CuttableProxy],
) -> None:
    lane, _ = database_lane
    (run_id,) = lane.submit_and_die_before_enqueue(tiny_spec("sent by actlab maintain"))
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "maintain", "--json"],
        env={**lane.stack.environment, **lane.environment(ACTLAB_QUEUED_GRACE_SECONDS="0.001")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["enqueued"] == [str(run_id)]
    run = lane.wait_for_run(run_id, timeout=90)
    assert (run.status, run.attempt, run.epochs_completed) == ("succeeded", 1, 2)
