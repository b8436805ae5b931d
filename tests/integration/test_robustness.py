"""Robustness through the real API and a real Celery worker: a version-2 spec with an evaluation block."""

from __future__ import annotations

import io

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import ManagedProcess, train_to_success

pytestmark = pytest.mark.integration


def test_an_evaluation_block_gives_robustness_rows_results_a_plot_and_a_report_section(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = {
        "version": 2,
        "name": "robustness",
        "dataset": {"name": "spirals"},
        "model": {"kind": "mlp", "hidden": [32, 32], "norm": "batch"},
        "activations": ["relu", "tanh"],
        "seeds": [0, 1],
        "training": {"epochs": 12, "batch_size": 64, "lr": 0.03},
        "device": "cpu",
        "evaluation": {"noise_std": [0.5], "fgsm_epsilon": [0.0, 0.3], "pgd_epsilon": [0.1, 0.3], "pgd_steps": 5},
    }
    experiment = train_to_success(api, spec)
    base = f"/v1/experiments/{experiment['id']}"

    rows = api.get(f"{base}/robustness").json()
    assert len(rows) == 4 * 5, "one row per run and strength, exactly once"
    assert list(rows[0])[:7] == ["run_id", "activation", "seed", "cell", "kind", "strength", "accuracy"]
    final = {
        (row["activation"], row["seed"]): row["test_accuracy"]
        for row in api.get(f"{base}/metrics", params={"epoch_min": 12}).json()
    }
    by_run: dict[tuple[str, int], dict[tuple[str, float], float]] = {}
    for row in rows:
        by_run.setdefault((row["activation"], row["seed"]), {})[(row["kind"], row["strength"])] = row["accuracy"]
    for run, points in by_run.items():
        # FGSM at epsilon 0 is the clean test accuracy; on these trained nets a larger PGD epsilon takes more away.
        assert final[run] > 0.6, "the nets must have learned for the attacks to mean something"
        assert points[("fgsm", 0.0)] == pytest.approx(final[run], abs=1e-9)
        assert points[("pgd", 0.3)] <= points[("pgd", 0.1)] < final[run]
    csv = pd.read_csv(io.StringIO(api.get(f"{base}/robustness", params={"format": "csv"}).text))
    assert len(csv) == 20 and set(csv["kind"]) == {"noise", "fgsm", "pgd"}

    summary = api.get(f"{base}/results", params={"view": "robustness"}).json()
    assert len(summary) == 2 * 5
    assert {row["verdict"] for row in summary if row["activation"] == "relu"} == {"baseline"}
    assert all(row["n"] == 2 and row["generalisation_gap"] is not None for row in summary)

    plot = api.get(f"{base}/plots/robustness.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    report = api.get(f"/experiments/{experiment['id']}").text
    assert 'id="robustness-table"' in report and 'id="robustness-plot"' in report
