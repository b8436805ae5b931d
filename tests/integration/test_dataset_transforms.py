"""An experiment whose factor is dataset.transforms, through the real API and a real Celery worker."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, train_to_success

pytestmark = pytest.mark.integration


def test_a_transforms_factor_trains_each_cell_on_its_own_data(api: httpx.Client, cpu_worker: ManagedProcess) -> None:
    subset = [{"kind": "permute", "seed": 3}, {"kind": "subset", "size": 100, "seed": 0}]
    spec = {
        "version": 2,
        "name": "transforms",
        "dataset": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [16]},
        "activations": ["relu", "tanh"],
        "seeds": [0],
        "training": {"epochs": 2, "batch_size": 50, "lr": 0.01},
        "device": "cpu",
        "factors": {"dataset.transforms": [[], subset]},
    }
    experiment = train_to_success(api, spec)

    rows = api.get(f"/v1/experiments/{experiment['id']}/metrics").json()
    final = {(row["activation"], row["dataset.transforms"]): row for row in rows if row["epoch"] == 2}
    assert len(final) == 4
    by_level: dict[str, list[dict[str, float]]] = {}
    for (_, level), row in final.items():
        by_level.setdefault(level, []).append(row)
    assert len(by_level) == 2 and "[]" in by_level
    assert all('"subset"' in level for level in by_level if level != "[]")
    # 100 permuted training examples against 1,437: the cells trained on different data.
    accuracies = {level: sorted(row["test_accuracy"] for row in level_rows) for level, level_rows in by_level.items()}
    assert len({tuple(value) for value in accuracies.values()}) == 2
