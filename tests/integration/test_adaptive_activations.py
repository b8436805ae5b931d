"""An experiment with input-conditioned activations through the real API and a real Celery worker."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, train_to_success

pytestmark = pytest.mark.integration


def test_dynamic_relu_and_meta_acon_train_on_the_worker_and_their_coefficients_are_served(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = {
        "name": "adaptive activations",
        "dataset": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [16]},
        "activations": ["relu", {"name": "dyrelu", "params": {"pieces": 3}}, "meta_acon"],
        "seeds": [0],
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.01},
        "device": "cpu",
    }
    experiment = train_to_success(api, spec)
    layers = api.get(f"/v1/experiments/{experiment['id']}/layer-metrics").json()
    hidden = {(row["activation"], row["epoch"]): row for row in layers if row["layer_name"] == "hidden1"}
    dyrelu = hidden[("dyrelu(pieces=3)", 2)]["activation_parameters"]
    assert {"a1_mean", "a3_std", "b3_mean"} <= set(dyrelu)
    assert {"beta_mean", "beta_std", "p1_mean", "p2_std"} <= set(hidden[("meta_acon", 2)]["activation_parameters"])
    assert hidden[("relu", 2)]["activation_parameters"] is None
