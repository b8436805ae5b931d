"""The queue's reliability settings, and that importing the worker never pulls in torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from pydantic import ValidationError

from app.config import Settings
from worker.celery_app import QUEUES, configure


def test_importing_the_worker_modules_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import worker.celery_app, worker.tasks, worker.runner, worker.heartbeat, app.dispatch\n"
        "loaded = sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""


def _configured(settings: Settings) -> Celery:
    app = Celery("test")
    configure(app, settings)
    return app


def test_redis_broker_gets_late_acks_prefetch_one_and_a_visibility_timeout_above_the_hard_limit() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", task_soft_time_limit=3600, task_time_limit_grace=60)
    conf = _configured(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (3600, 3660)
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_backend is None
    assert sorted(queue.name for queue in conf.task_queues) == sorted(QUEUES)
    assert conf.task_default_queue == "cpu"


def test_the_key_prefix_setting_reaches_the_redis_transport() -> None:
    conf = _configured(Settings(broker_url="redis://127.0.0.1:6379/0", broker_key_prefix="team-a:")).conf
    assert conf.broker_transport_options["global_keyprefix"] == "team-a:"


def test_a_visibility_timeout_not_above_the_hard_limit_is_refused() -> None:
    with pytest.raises(ValidationError, match="broker_visibility_timeout"):
        Settings(task_soft_time_limit=100, task_time_limit_grace=20, broker_visibility_timeout=120)


def test_the_embedded_broker_lives_in_folders_under_the_broker_folder(tmp_path: Path) -> None:
    settings = Settings(broker_url="filesystem://", broker_folder=tmp_path / "broker")
    options = _configured(settings).conf.broker_transport_options
    # The API writes where the worker reads.
    assert options["data_folder_in"] == options["data_folder_out"]
    for key in ("data_folder_in", "control_folder", "processed_folder"):
        assert Path(options[key]).is_dir()
        assert Path(options[key]).is_relative_to(tmp_path / "broker")
