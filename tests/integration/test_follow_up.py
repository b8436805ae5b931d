"""Following an experiment up on the production stack: more seeds, and a retry that resumes a failed run.

Through the real API (uvicorn) with a real worker on Redis and PostgreSQL, the stack of
tests/integration/conftest.py (a checkpoint after every epoch). The failure is a deterministic
database error: a trigger refuses one epoch's metric row of the first attempt, as a bug would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.db import make_engine
from tests.integration.conftest import ManagedProcess, Stack, spirals_spec, wait_for_experiment
from tests.integration.lanes import stored_metrics, uninterrupted_metrics

pytestmark = pytest.mark.integration

FAILING_EPOCH = 3
_FAILING_NAME = "retry resumes from the checkpoint"


def _results(api: httpx.Client, experiment_id: str) -> dict[str, dict[str, Any]]:
    response = api.get(f"/v1/experiments/{experiment_id}/results", params={"format": "json"})
    assert response.status_code == 200, response.text
    return {row["activation"]: row for row in response.json()}


@pytest.fixture
def warm_worker(api: httpx.Client, cpu_worker: ManagedProcess) -> ManagedProcess:
    """The worker after one run of its own: torch and the data loaded in its pool process, so the tests' runs
    are timed on training alone (ACTLAB_TASK_SOFT_TIME_LIMIT of the stack); that run may end either way."""
    warm_up = api.post("/v1/experiments", json=spirals_spec(name="warm up", epochs=1)).json()
    wait_for_experiment(api, warm_up["id"], timeout=180)
    return cpu_worker


def test_added_seeds_are_trained_paired_and_the_results_are_computed_over_every_seed(
    api: httpx.Client, warm_worker: ManagedProcess
) -> None:
    spec = spirals_spec(name="extend seeds", epochs=2, activations=["relu", "tanh"], seeds=[0, 1])
    submitted = api.post("/v1/experiments", json=spec).json()
    trained = wait_for_experiment(api, submitted["id"], timeout=180)
    assert trained["status"] == "succeeded", trained["error"]
    before = _results(api, submitted["id"])
    assert (before["relu"]["n"], before["tanh"]["n"], before["tanh"]["paired_n"]) == (2, 2, 2)

    response = api.post(f"/v1/experiments/{submitted['id']}/seeds", json={"seeds": [2, 3]})
    assert response.status_code == 202, response.text
    assert len(response.json()["runs"]) == 4

    experiment = wait_for_experiment(api, submitted["id"], timeout=180)
    assert experiment["status"] == "succeeded", experiment
    assert (experiment["id"], experiment["spec_hash"]) == (submitted["id"], submitted["spec_hash"])
    assert experiment["spec"]["seeds"] == [0, 1, 2, 3]
    after = _results(api, submitted["id"])
    # n grows: every statistic, the paired comparison included, now counts the four seeds.
    assert (after["relu"]["n"], after["tanh"]["n"], after["tanh"]["paired_n"]) == (4, 4, 4)
    assert after["tanh"]["seeds"] == "0;1;2;3"
    rows = api.get(f"/v1/experiments/{submitted['id']}/metrics").json()
    # 8 runs x (epoch 0 at initialisation + 2 trained epochs).
    assert len(rows) == len({(row["run_id"], row["epoch"]) for row in rows}) == 8 * 3


@pytest.fixture
def failing_epoch(stack: Stack) -> Iterator[Engine]:
    """A trigger that fails the first attempt's epoch FAILING_EPOCH of seed 0 of the experiment named _FAILING_NAME."""
    engine = make_engine(stack.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                """
                CREATE FUNCTION refuse_one_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.epoch = :epoch AND NEW.attempt = 1 AND EXISTS (
                        SELECT 1 FROM runs JOIN experiments ON experiments.id = runs.experiment_id
                        WHERE runs.id = NEW.run_id AND runs.seed = 0 AND experiments.name = :name
                    ) THEN
                        RAISE EXCEPTION 'injected failure at epoch %', NEW.epoch;
                    END IF;
                    RETURN NEW;
                END $$
                """.replace(":epoch", str(FAILING_EPOCH)).replace(":name", f"'{_FAILING_NAME}'")
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER refuse_one_epoch BEFORE INSERT ON epoch_metrics "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one_epoch()"
            )
        )
    try:
        yield engine
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER IF EXISTS refuse_one_epoch ON epoch_metrics"))
            connection.execute(text("DROP FUNCTION IF EXISTS refuse_one_epoch()"))
        engine.dispose()


def test_retry_resumes_a_failed_run_from_its_checkpoint_to_the_numbers_of_an_uninterrupted_run(
    api: httpx.Client, warm_worker: ManagedProcess, failing_epoch: Engine
) -> None:
    spec = spirals_spec(name=_FAILING_NAME, epochs=5)
    submitted = api.post("/v1/experiments", json=spec).json()
    failed = wait_for_experiment(api, submitted["id"], timeout=180)
    (run,) = failed["runs"]
    assert (failed["status"], run["status"], run["attempt"]) == ("failed", "failed", 1), failed
    assert "injected failure at epoch 3" in run["error"]
    assert [row["epoch"] for row in api.get(f"/v1/experiments/{submitted['id']}/metrics").json()] == [0, 1, 2]

    # A seed added first changes the stored spec: the checkpoint must still be the failed run's own.
    assert api.post(f"/v1/experiments/{submitted['id']}/seeds", json={"seeds": [1]}).status_code == 202
    # The new seed's run trains first, so the retried run trains alone on the ordinary path that the in-process
    # reference takes: stacked with it, it would match to the stacked tolerance, not bit for bit.
    extended = wait_for_experiment(api, submitted["id"], timeout=180)
    assert [(item["seed"], item["status"]) for item in extended["runs"]] == [(0, "failed"), (1, "succeeded")]
    response = api.post(f"/v1/experiments/{submitted['id']}/retry")
    assert response.status_code == 202, response.text
    # The runs as they stand after the requeue: the warm worker may already have claimed it.
    [(requeued_id, requeued_status)] = [(item["id"], item["status"]) for item in response.json()["runs"]]
    assert requeued_id == run["id"] and requeued_status in ("queued", "running")

    experiment = wait_for_experiment(api, submitted["id"], timeout=180)
    retried, added = experiment["runs"]
    assert (experiment["status"], retried["status"], retried["attempt"]) == ("succeeded", "succeeded", 2), experiment
    assert (added["seed"], added["status"]) == (1, "succeeded")
    assert api.get(f"/v1/runs/{run['id']}").json()["stack_id"] is None
    rows = api.get(f"/v1/experiments/{submitted['id']}/metrics", params={"run_id": run["id"]}).json()
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3, 4, 5]
    # Resumed, not restarted: the second attempt wrote only the epochs after the last checkpoint (epoch 2's).
    with failing_epoch.connect() as connection:
        attempts = dict(
            connection.execute(
                text("SELECT epoch, attempt FROM epoch_metrics WHERE run_id = :run ORDER BY epoch"), {"run": run["id"]}
            ).all()
        )
    assert attempts == {0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 2}
    assert stored_metrics(rows) == uninterrupted_metrics(spec)
