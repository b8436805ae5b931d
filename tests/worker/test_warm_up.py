"""Pool processes warm up in the background: the warm-up dataset is loaded and a tiny model trained a step."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app.config import Settings
from worker import warm_up
from worker.training import datasets


def _settings(tmp_path: Path, dataset: str) -> Settings:
    return Settings(worker_warm_up_dataset=dataset, dataset_cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")


def test_the_warm_up_leaves_its_dataset_loaded_in_the_process_and_on_disk(tmp_path: Path) -> None:
    datasets.clear_dataset_cache()
    warm_up.warm_up(_settings(tmp_path, "spirals"))
    assert any(key[0] == "spirals" for key in datasets._splits_cache)
    assert list((tmp_path / "cache").glob("spirals-*.npz"))


def test_a_pool_process_starts_the_warm_up_in_a_thread_and_not_without_a_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[str] = []
    done = threading.Event()

    def record(settings: Settings) -> None:
        warmed.append(settings.worker_warm_up_dataset)
        done.set()

    monkeypatch.setattr(warm_up, "warm_up", record)
    monkeypatch.setattr(warm_up, "get_settings", lambda: _settings(tmp_path, ""))
    warm_up._start_warm_up()
    assert not any(thread.name == "actlab-warm-up" for thread in threading.enumerate())
    monkeypatch.setattr(warm_up, "get_settings", lambda: _settings(tmp_path, "digits"))
    warm_up._start_warm_up()
    assert done.wait(timeout=60)
    assert warmed == ["digits"]


def test_a_failing_warm_up_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    warm_up._warm_up_in_background(_settings(tmp_path, "no_such_dataset"))
    assert "warm-up failed" in caplog.text
