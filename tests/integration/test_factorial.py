"""A factorial (version-2) experiment end to end on the production stack: real API, worker, Redis, PostgreSQL.

A 2x2 design (depth x learning rate) of a tiny spirals MLP, two activations, two seeds, two epochs: the
metrics carry the cell, the results are computed per cell, the ranking and effects relate the cells, both
across-cell plots render and the report shows its factorial section.
"""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, spirals_spec, wait_for_experiment

pytestmark = pytest.mark.integration

CELLS = {"hidden=8, lr=0.01", "hidden=8, lr=0.05", "hidden=2x8, lr=0.01", "hidden=2x8, lr=0.05"}


def test_a_factorial_experiment_trains_per_cell_and_its_results_relate_the_cells(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = spirals_spec(name="factorial end to end", epochs=2, samples=200, activations=["relu", "tanh"], seeds=[0, 1])
    spec |= {"version": 2, "factors": {"model.hidden": [[8], [8, 8]], "training.lr": [0.01, 0.05]}}
    submitted = api.post("/v1/experiments", json=spec)
    assert submitted.status_code == 202, submitted.text
    experiment_id = submitted.json()["id"]
    finished = wait_for_experiment(api, experiment_id, timeout=300)
    assert finished["status"] == "succeeded", finished.get("error")
    base = f"/v1/experiments/{experiment_id}"

    metrics = api.get(f"{base}/metrics").json()
    # 4 cells x 2 activations x 2 seeds x (epoch 0 at initialisation + 2 trained epochs).
    assert len(metrics) == 4 * 2 * 2 * 3
    assert {row["cell"] for row in metrics} == CELLS

    summary = api.get(f"{base}/results").json()
    assert {(row["cell"], row["activation"]) for row in summary} == {
        (cell, label) for cell in CELLS for label in ("relu", "tanh")
    }
    assert {row["n"] for row in summary} == {2}
    pairs = api.get(f"{base}/results", params={"view": "pairs"}).json()
    assert len(pairs) == 4 * 2 and {row["cell"] for row in pairs} == CELLS

    ranking = api.get(f"{base}/results", params={"view": "ranking"}).json()
    assert {row["activation"] for row in ranking} == {"relu", "tanh"}
    assert ranking[0]["status"] == "ok" and ranking[0]["test"] == "wilcoxon"
    assert sorted(row["mean_rank"] for row in ranking)[0] <= 1.5
    assert set(ranking[0]["cells"]) == CELLS

    effects = api.get(f"{base}/results", params={"view": "effects"}).json()
    assert {row["factor"] for row in effects} == {"model.hidden", "training.lr"}
    assert {row["level"] for row in effects if row["factor"] == "model.hidden"} == {"[8]", "[8,8]"}
    assert all(row["n"] == 2 for row in effects)

    for kind in ("critical-difference", "interaction"):
        image = api.get(f"{base}/plots/{kind}.png")
        assert image.status_code == 200, image.text
        assert image.content.startswith(b"\x89PNG\r\n\x1a\n")

    report = api.get(f"/experiments/{experiment_id}")
    assert report.status_code == 200
    assert '<h2 id="factorial">Across cells</h2>' in report.text
    assert f"{base}/plots/critical-difference.png" in report.text
