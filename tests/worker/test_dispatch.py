"""Queue choice for a spec's device, and one broker message per run."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from app.config import get_settings
from app.db import session_scope
from app.dispatch import choose_queue, enqueue_runs
from app.models.types import utc_now
from app.workers.repository import upsert_worker_node
from worker.celery_app import TRAIN_RUNS_TASK, celery_app


@pytest.fixture
def engine(database: Engine) -> Engine:
    """These tests run on SQLite and on PostgreSQL."""
    return database


def _worker(engine: Engine, *, hostname: str, device: str, queues: list[str], age: float = 0.0) -> None:
    with session_scope(engine) as session:
        upsert_worker_node(
            session=session,
            hostname=hostname,
            queues=queues,
            device=device,
            now=utc_now() - timedelta(seconds=age),
        )


def _choose(engine: Engine, device: str) -> str:
    with session_scope(engine) as session:
        return choose_queue(session=session, device=device)


def test_explicit_devices_map_to_their_queue(engine: Engine) -> None:
    assert _choose(engine, "cuda") == "gpu"
    assert _choose(engine, "cpu") == "cpu"


def test_auto_goes_to_cpu_without_a_live_gpu_worker(engine: Engine) -> None:
    assert _choose(engine, "auto") == "cpu"
    _worker(engine, hostname="cpu-only", device="cpu", queues=["cpu", "gpu"])
    assert _choose(engine, "auto") == "cpu"


def test_auto_goes_to_gpu_while_a_gpu_worker_is_fresh(engine: Engine) -> None:
    _worker(engine, hostname="actlab-gpu@box", device="cuda:NVIDIA H100", queues=["gpu"])
    assert _choose(engine, "auto") == "gpu"


def test_auto_ignores_a_gpu_worker_whose_heartbeat_is_old(engine: Engine) -> None:
    stale = get_settings().worker_fresh_seconds + 60
    _worker(engine, hostname="actlab-gpu@box", device="cuda:NVIDIA H100", queues=["gpu"], age=stale)
    assert _choose(engine, "auto") == "cpu"


def test_auto_ignores_a_gpu_machine_that_only_consumes_the_cpu_queue(engine: Engine) -> None:
    _worker(engine, hostname="actlab-cpu@box", device="cuda:NVIDIA H100", queues=["cpu"])
    assert _choose(engine, "auto") == "cpu"


def test_an_unknown_device_is_refused_with_the_allowed_values(engine: Engine) -> None:
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda'"):
        _choose(engine, "tpu")


def test_enqueue_sends_one_message_per_run_with_string_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def fake_send_task(name: str, **options: Any) -> None:
        sent.append((name, options))

    monkeypatch.setattr(celery_app, "send_task", fake_send_task)
    run_ids = [uuid.uuid4(), uuid.uuid4()]
    enqueue_runs(run_ids=run_ids, queue="gpu")
    assert sent == [
        (TRAIN_RUNS_TASK, {"kwargs": {"run_ids": [str(run_ids[0])]}, "queue": "gpu"}),
        (TRAIN_RUNS_TASK, {"kwargs": {"run_ids": [str(run_ids[1])]}, "queue": "gpu"}),
    ]


def test_enqueue_refuses_an_unknown_queue() -> None:
    with pytest.raises(ValueError, match="cpu, gpu"):
        enqueue_runs(run_ids=[uuid.uuid4()], queue="tpu")
