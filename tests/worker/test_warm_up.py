"""The worker warms up in its main process before the pool forks: engine, optimisers and the warm-up dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.spec import DatasetSpec
from worker import warm_up
from worker.training import datasets


def _settings(tmp_path: Path, dataset: str) -> Settings:
    return Settings(worker_warm_up_dataset=dataset, dataset_cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")


def test_the_warm_up_leaves_its_dataset_loaded_in_the_process_and_on_disk(tmp_path: Path) -> None:
    datasets.clear_dataset_cache()
    settings = _settings(tmp_path, "spirals")
    entry = datasets.disk_cache_entry(DatasetSpec(name="spirals"), settings=settings)
    assert entry is not None and not entry.exists()
    warm_up.warm_up(settings)
    assert any(key[0] == "spirals" for key in datasets._splits_cache)
    assert entry.is_file()


def test_the_worker_warms_up_in_its_setup_signal_and_not_without_a_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warmed: list[str] = []
    monkeypatch.setattr(warm_up, "warm_up", lambda settings: warmed.append(settings.worker_warm_up_dataset))
    monkeypatch.setattr(warm_up, "get_settings", lambda: _settings(tmp_path, ""))
    warm_up.celeryd_after_setup.send(sender="worker@test", instance=None, conf=None)
    assert warmed == []
    monkeypatch.setattr(warm_up, "get_settings", lambda: _settings(tmp_path, "digits"))
    # Done by the time the signal returns: the pool forks after it.
    warm_up.celeryd_after_setup.send(sender="worker@test", instance=None, conf=None)
    assert warmed == ["digits"]


def test_a_failing_warm_up_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(settings: Settings) -> None:
        raise OSError("no such folder")

    monkeypatch.setattr(warm_up, "warm_up", fail)
    monkeypatch.setattr(warm_up, "get_settings", lambda: _settings(tmp_path, "digits"))
    warm_up._warm_up_before_the_pool_forks()
    assert "worker warm-up failed: no such folder" in caplog.text


def test_an_unknown_warm_up_dataset_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; allowed: digits, mnist1d"):
        Settings(worker_warm_up_dataset="nope")
