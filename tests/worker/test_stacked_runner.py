"""Stacked execution of an experiment's runs on SQLite with the real engine: tiny spirals MLPs, a few epochs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.db import session_scope
from app.models import EpochMetric, Experiment, LayerMetric, Run, RunStatus
from app.models.types import utc_now
from app.runs.stack_repository import unfinished_runs_of_task
from app.runs.state_repository import claim_run
from app.spec import ExperimentSpec
from tests.worker.conftest import GRID_SPEC, add_experiment, one_worker_settings, runs_in_order
from worker import pool, stacked_runner
from worker.stacked_runner import StackPlan, execute_run_stacked, execute_runs

# Overflows to infinity in the first epoch: that member diverges, the relu members must not notice.
DIVERGING_SPEC: dict[str, Any] = {
    **GRID_SPEC,
    "activations": ["relu", {"name": "custom", "expression": "x * exp(x * 100)", "label": "blowup"}],
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return one_worker_settings(tmp_path)


def _rows(engine: Engine, run_id: uuid.UUID) -> list[EpochMetric]:
    with session_scope(engine) as session:
        statement = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
        return list(session.execute(statement).scalars())


def _experiment(engine: Engine, run_id: uuid.UUID) -> Experiment:
    with session_scope(engine) as session:
        return session.execute(
            select(Experiment).join(Run, Run.experiment_id == Experiment.id).where(Run.id == run_id)
        ).scalar_one()


def _epoch(arguments: dict[str, Any]) -> int:
    """The epoch of a stack's metric write (one call per epoch, every live member's rows)."""
    epochs = {report.epoch for _, _, report in arguments["writes"]}
    assert len(epochs) == 1
    return epochs.pop()


def _cancel_experiment(session: Any, run_id: uuid.UUID) -> None:
    experiment_id = session.execute(select(Run.experiment_id).where(Run.id == run_id)).scalar_one()
    session.execute(update(Experiment).where(Experiment.id == experiment_id).values(cancel_requested_at=utc_now()))


def test_one_task_trains_the_whole_grid_stacked_with_the_numbers_of_ordinary_runs(
    database: Engine, settings: Settings
) -> None:
    # On SQLite and on the real PostgreSQL (row locks, one transaction per epoch).
    engine = database
    from worker.training.trainer import train_arm

    run_ids = add_experiment(engine, GRID_SPEC)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {outcome.run_id for outcome in batch.outcomes} == set(run_ids)
    assert all(outcome.status == RunStatus.succeeded and outcome.attempt == 1 for outcome in batch.outcomes)
    spec = ExperimentSpec.model_validate(GRID_SPEC)
    for run in runs_in_order(engine, run_ids):
        assert (run.status, run.epochs_completed, run.attempt, run.task_id) == ("succeeded", 3, 1, "t1")
        assert (run.training_path, run.device) == ("stacked", "cpu")
        assert run.parameter_count and run.init_scheme and run.training_seconds
        rows = _rows(engine, run.id)
        # Epoch 0, the network at initialisation, as the ordinary trainer measures it.
        assert [row.epoch for row in rows] == [0, 1, 2, 3]
        assert rows[0].epoch_seconds is None
        reference = train_arm(spec, activation_index=run.activation_index, seed=run.seed, device="cpu")
        for row, report in zip(rows, reference.reports, strict=True):
            assert row.train_loss == pytest.approx(report.train_loss, rel=1e-4, abs=1e-6)
            assert row.test_loss == pytest.approx(report.test_loss, rel=1e-4, abs=1e-6)
            assert row.test_accuracy == pytest.approx(report.test_accuracy, abs=1e-6)
        with session_scope(engine) as session:
            layers = session.execute(
                select(LayerMetric.epoch, LayerMetric.layer, LayerMetric.grad_norm).where(LayerMetric.run_id == run.id)
            ).all()
        expected = [
            (report.epoch, layer.layer, layer.grad_norm) for report in reference.reports for layer in report.layers
        ]
        assert [(epoch, layer) for epoch, layer, _ in sorted(layers)] == [
            (epoch, layer) for epoch, layer, _ in expected
        ]
        assert [norm for _, _, norm in sorted(layers)] == pytest.approx([norm for _, _, norm in expected], rel=1e-4)
        assert not (settings.checkpoint_dir / f"{run.id}.pt").exists()
    assert _experiment(engine, run_ids[0]).status == "succeeded"
    # The tasks of the other runs arrive afterwards and find nothing to do.
    later = execute_runs(run_ids=run_ids[1:2], worker_host="w2", task_id="t2", engine=engine, settings=settings)
    assert [(outcome.run_id, outcome.status) for outcome in later.outcomes] == [(run_ids[1], None)]
    assert runs_in_order(engine, run_ids[1:2])[0].attempt == 1


def test_two_worker_processes_split_the_grid_and_skip_the_tasks_of_runs_the_other_took(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_processes = settings.model_copy(update={"worker_concurrency": 2})
    run_ids = add_experiment(engine, GRID_SPEC)
    stacks: list[int] = []
    real_train = stacked_runner.train_claimed_stack

    def record_stack(**arguments: Any) -> Any:
        stacks.append(len(arguments["group"]))
        return real_train(**arguments)

    monkeypatch.setattr(stacked_runner, "train_claimed_stack", record_stack)
    # Tasks arrive in queue order (relu 0, relu 1, ...): the first takes half the grid, highest seeds first with
    # both activations, so the next task names a run still queued and starts the other half at once.
    first = execute_runs(run_ids=[run_ids[0]], worker_host="w1", task_id="t1", engine=engine, settings=two_processes)
    assert {outcome.run_id for outcome in first.outcomes} == {run_ids[0], run_ids[2], run_ids[5]}
    assert runs_in_order(engine, [run_ids[1]])[0].status == "queued"
    second = execute_runs(run_ids=[run_ids[1]], worker_host="w2", task_id="t2", engine=engine, settings=two_processes)
    assert {outcome.run_id for outcome in second.outcomes} == {run_ids[1], run_ids[3], run_ids[4]}
    assert stacks == [3, 3]
    for index in (2, 3, 4, 5):
        skipped = execute_runs(
            run_ids=[run_ids[index]], worker_host="w3", task_id=f"t{index + 1}", engine=engine, settings=two_processes
        )
        assert [outcome.status for outcome in skipped.outcomes] == [None]
    runs = runs_in_order(engine, run_ids)
    assert [run.status for run in runs] == ["succeeded"] * 6
    assert [run.attempt for run in runs] == [1] * 6
    assert [run.task_id for run in runs] == ["t1", "t2", "t1", "t2", "t2", "t1"]
    assert all(len(_rows(engine, run_id)) == 4 for run_id in run_ids)


def test_a_diverging_member_ends_diverged_and_the_others_succeed(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, DIVERGING_SPEC)
    execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    runs = runs_in_order(engine, run_ids)
    assert [run.status for run in runs] == ["succeeded"] * 3 + ["diverged"] * 3
    for run in runs[3:]:
        assert (run.diverged_epoch, run.epochs_completed, run.training_path) == (1, 1, "stacked")
        assert run.training_seconds is not None and run.training_seconds > 0
        assert [row.epoch for row in _rows(engine, run.id)] == [0, 1]
    for run in runs[:3]:
        assert [row.epoch for row in _rows(engine, run.id)] == [0, 1, 2, 3]
        assert all(row.train_loss is not None for row in _rows(engine, run.id))
    assert _experiment(engine, run_ids[0]).status == "partial"


def test_cancel_stops_every_member_at_the_epoch_boundary_and_keeps_finished_epochs(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**GRID_SPEC, "training": {**GRID_SPEC["training"], "epochs": 6}}
    run_ids = add_experiment(engine, spec)
    real_upsert = stacked_runner.upsert_epoch_metrics_of_runs
    writes: list[int] = []

    def upsert_then_cancel_in_epoch_two(**arguments: Any) -> None:
        real_upsert(**arguments)
        epochs = [report.epoch for _, _, report in arguments["writes"]]
        writes.extend(epochs)
        if epochs[0] == 2:
            _cancel_experiment(arguments["session"], run_ids[0])

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", upsert_then_cancel_in_epoch_two)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert [outcome.status for outcome in batch.outcomes] == [RunStatus.cancelled] * 6
    assert writes == [0] * 6 + [1] * 6 + [2] * 6
    for run in runs_in_order(engine, run_ids):
        assert (run.status, run.epochs_completed) == ("cancelled", 2)
        assert [row.epoch for row in _rows(engine, run.id)] == [0, 1, 2]
        assert not (settings.checkpoint_dir / f"{run.id}.pt").exists()
    assert _experiment(engine, run_ids[0]).status == "cancelled"


def test_a_member_taken_over_by_a_newer_attempt_stops_and_the_others_go_on(
    database: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite and on the real PostgreSQL (row locks, one transaction per epoch).
    engine = database
    spec = {**GRID_SPEC, "training": {**GRID_SPEC["training"], "epochs": 4}}
    run_ids = add_experiment(engine, spec)
    lost = run_ids[3]
    real_upsert = stacked_runner.upsert_epoch_metrics_of_runs

    def upsert_then_lose_one_run(**arguments: Any) -> None:
        real_upsert(**arguments)
        if _epoch(arguments) == 1:
            # Another worker takes that run over (its heartbeat looked stale to it).
            claim_run(
                session=arguments["session"],
                run_id=lost,
                worker_host="w2",
                task_id="other",
                stale_after=timedelta(seconds=-1),
            )

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", upsert_then_lose_one_run)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    statuses = {outcome.run_id: outcome.status for outcome in batch.outcomes}
    assert statuses.pop(lost) is None
    assert set(statuses.values()) == {RunStatus.succeeded}
    taken = runs_in_order(engine, [lost])[0]
    assert (taken.status, taken.attempt, taken.worker_host, taken.task_id) == ("running", 2, "w2", "other")
    assert [(row.epoch, row.attempt) for row in _rows(engine, lost)] == [(0, 1), (1, 1)]
    for run_id in statuses:
        assert [row.epoch for row in _rows(engine, run_id)] == [0, 1, 2, 3, 4]


def test_a_redelivered_task_takes_its_whole_stack_back_and_resumes_from_the_checkpoints(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint after every epoch, so the redelivery resumes from epoch 2's.
    settings = settings.model_copy(update={"checkpoint_interval_seconds": 0})
    spec = {**GRID_SPEC, "training": {**GRID_SPEC["training"], "epochs": 4}}
    reference_ids = add_experiment(engine, spec)
    execute_runs(run_ids=reference_ids[:1], worker_host="w1", task_id="reference", engine=engine, settings=settings)
    reference = {run.seed * 10 + run.activation_index: run.id for run in runs_in_order(engine, reference_ids)}

    run_ids = add_experiment(engine, spec)
    real_upsert = stacked_runner.upsert_epoch_metrics_of_runs

    def worker_stops_in_epoch_three(**arguments: Any) -> None:
        if _epoch(arguments) == 3:
            # The pool process is being stopped (SIGTERM or a cold shutdown) in the middle of the epoch's writes.
            raise SystemExit(1)
        real_upsert(**arguments)

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", worker_stops_in_epoch_three)
    with pytest.raises(SystemExit):
        execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {run.status for run in runs_in_order(engine, run_ids)} == {"running"}
    assert all((settings.checkpoint_dir / f"{run_id}.pt").exists() for run_id in run_ids)
    # Meanwhile the task of another run of the stack is delivered: that run is running under t1, so it is skipped.
    skipped = execute_runs(run_ids=[run_ids[2]], worker_host="w2", task_id="t3", engine=engine, settings=settings)
    assert [outcome.status for outcome in skipped.outcomes] == [None]

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", real_upsert)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert sorted(outcome.attempt or 0 for outcome in batch.outcomes) == [2] * 6
    for run in runs_in_order(engine, run_ids):
        assert (run.status, run.attempt, run.epochs_completed) == ("succeeded", 2, 4)
        rows = _rows(engine, run.id)
        # Epoch 0 is not measured again on resume: it stays the first attempt's row.
        assert [(row.epoch, row.attempt) for row in rows] == [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2)]
        expected = _rows(engine, reference[run.seed * 10 + run.activation_index])
        assert [row.train_loss for row in rows] == pytest.approx([row.train_loss for row in expected], rel=1e-6)


def test_a_transient_database_error_leaves_the_stack_to_the_retry_of_the_same_task(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    real_upsert = stacked_runner.upsert_epoch_metrics_of_runs

    def database_drops_at_epoch_two(**arguments: Any) -> None:
        if _epoch(arguments) == 2:
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
        real_upsert(**arguments)

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", database_drops_at_epoch_two)
    with pytest.raises(OperationalError):
        execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    with session_scope(engine) as session:
        # What the task's failure handler marks failed if it gives up: every run the task holds.
        held = unfinished_runs_of_task(session=session, task_id="t1", run_ids=run_ids[:1])
    assert set(held) == set(run_ids)
    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", real_upsert)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {outcome.status for outcome in batch.outcomes} == {RunStatus.succeeded}
    assert all([row.epoch for row in _rows(engine, run_id)] == [0, 1, 2, 3] for run_id in run_ids)


def test_the_time_limit_ends_every_member_timed_out_with_its_finished_epochs(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {**GRID_SPEC, "training": {**GRID_SPEC["training"], "epochs": 5}}
    run_ids = add_experiment(engine, spec)
    real_upsert = stacked_runner.upsert_epoch_metrics_of_runs

    def time_runs_out_in_epoch_three(**arguments: Any) -> None:
        if _epoch(arguments) == 3:
            raise SoftTimeLimitExceeded()
        real_upsert(**arguments)

    monkeypatch.setattr(stacked_runner, "upsert_epoch_metrics_of_runs", time_runs_out_in_epoch_three)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert {outcome.status for outcome in batch.outcomes} == {RunStatus.timed_out}
    for run in runs_in_order(engine, run_ids):
        assert (run.status, run.epochs_completed) == ("timed_out", 2)
        assert run.error is not None and "time limit" in run.error
        assert [row.epoch for row in _rows(engine, run.id)] == [0, 1, 2]


def test_the_embedded_broker_drops_the_tasks_of_runs_a_stack_took_and_keeps_the_others(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    from celery import Celery

    from worker.celery_app import TRAIN_RUNS_TASK, configure
    from worker.maintenance import broker_run_ids

    embedded = settings.model_copy(update={"broker_url": "filesystem://", "broker_folder": tmp_path / "broker"})
    run_ids = add_experiment(engine, GRID_SPEC)
    unrelated = uuid.uuid4()
    producer = Celery("test-producer")
    configure(producer, embedded)
    for run_id in [*run_ids, unrelated]:
        producer.send_task(TRAIN_RUNS_TASK, kwargs={"run_ids": [str(run_id)]}, queue="cpu")
    producer.close()
    # The worker took the first run's task from the folder and stacks the grid.
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=embedded)
    assert {outcome.status for outcome in batch.outcomes} == {RunStatus.succeeded}
    assert broker_run_ids(embedded) == frozenset({run_ids[0], unrelated})


def test_a_spec_not_worth_stacking_trains_only_its_own_run_the_ordinary_way(engine: Engine, settings: Settings) -> None:
    # Dropout cannot be stacked exactly: each run trains alone and the others wait for their own tasks.
    spec = {**GRID_SPEC, "model": {"kind": "mlp", "hidden": [8], "dropout": 0.1}}
    run_ids = add_experiment(engine, spec)
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert [(outcome.run_id, outcome.status) for outcome in batch.outcomes] == [(run_ids[0], RunStatus.succeeded)]
    runs = runs_in_order(engine, run_ids)
    assert runs[0].training_path == "unstacked"
    assert [run.status for run in runs[1:]] == ["queued"] * 5


def test_stacking_turned_off_trains_one_run_per_task(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    alone = settings.model_copy(update={"stack_runs": False})
    batch = execute_runs(run_ids=run_ids[:1], worker_host="w1", task_id="t1", engine=engine, settings=alone)
    assert [outcome.run_id for outcome in batch.outcomes] == [run_ids[0]]
    assert runs_in_order(engine, run_ids[:1])[0].training_path == "unstacked"


def test_a_cancelled_experiment_claims_no_companions(engine: Engine, settings: Settings) -> None:
    run_ids = add_experiment(engine, GRID_SPEC)
    with session_scope(engine) as session:
        _cancel_experiment(session, run_ids[0])
    outcomes = execute_run_stacked(run_id=run_ids[0], worker_host="w1", task_id="t1", engine=engine, settings=settings)
    assert [(outcome.run_id, outcome.status) for outcome in outcomes] == [(run_ids[0], RunStatus.cancelled)]
    assert [run.status for run in runs_in_order(engine, run_ids[1:])] == ["queued"] * 5


def _plan(*, members_in_memory: int = 1000, on_gpu: bool = False) -> StackPlan:
    return StackPlan(
        spec=ExperimentSpec.model_validate(GRID_SPEC), device="cpu", on_gpu=on_gpu, members_in_memory=members_in_memory
    )


@pytest.mark.parametrize(
    ("updates", "on_gpu", "members_in_memory", "expected"),
    [
        ({"worker_concurrency": 2}, False, 1000, 13),
        ({"worker_concurrency": 1}, False, 1000, 25),
        ({"worker_concurrency": 2, "stack_worker_processes": 5}, False, 1000, 5),
        ({"worker_concurrency": 4}, True, 1000, 25),
        ({"worker_concurrency": 2, "stack_chunk_runs": 7}, False, 1000, 7),
        ({"worker_concurrency": 1}, True, 10, 10),
    ],
)
def test_the_chunk_of_a_25_arm_grid(
    settings: Settings, updates: dict[str, Any], on_gpu: bool, members_in_memory: int, expected: int
) -> None:
    plan = _plan(members_in_memory=members_in_memory, on_gpu=on_gpu)
    assert plan.chunk_size(settings=settings.model_copy(update=updates), experiment_runs=25) == expected


@pytest.mark.parametrize(
    ("threads", "processes", "cores", "expected"),
    [(0, 2, 2, 1), (0, 1, 2, 0), (0, 2, 8, 4), (0, 4, 2, 1), (3, 2, 2, 3)],
)
def test_torch_threads_share_the_cores_among_the_worker_processes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, threads: int, processes: int, cores: int, expected: int
) -> None:
    monkeypatch.setattr(pool, "available_cores", lambda: cores)
    configured = settings.model_copy(update={"torch_threads": threads, "worker_concurrency": processes})
    assert pool.torch_threads_in_force(configured) == expected


def test_the_concurrency_of_the_running_worker_wins_over_the_setting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "_worker_concurrency", None)

    class FakeWorker:
        concurrency = 3

    pool._remember_concurrency(sender=FakeWorker())
    assert pool.worker_processes(settings) == 3
