"""Version-2 model options through the real API and a real Celery worker: the issue's strided Conv1d net trains and
reports its 5,210 parameters, and a bidirectional GRU reports its reverse weights in the count."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import ManagedProcess, train_to_success
from tests.training.test_model_options import STRIDED

pytestmark = pytest.mark.integration


def test_a_strided_conv_net_and_a_bidirectional_gru_train_on_the_worker(
    api: httpx.Client, cpu_worker: ManagedProcess
) -> None:
    spec = {
        "version": 2,
        "name": "model options",
        "dataset": {"name": "mnist1d", "params": {"num_samples": 1000}},
        "model": STRIDED,
        "factors": {
            "model": [
                STRIDED,
                {"kind": "rnn", "cell": "gru", "hidden_size": 4, "head_hidden": 4, "bidirectional": True},
            ]
        },
        "activations": ["relu"],
        "seeds": [0],
        "training": {"epochs": 1, "batch_size": 128},
        "device": "cpu",
    }
    experiment = train_to_success(api, spec)
    runs = api.get(f"/v1/experiments/{experiment['id']}/runs").json()
    counts = sorted(run["parameter_count"] for run in (runs["items"] if isinstance(runs, dict) else runs))
    # gru: 2 directions x 3 gates x (1 x 4 + 4 x 4 + 2 x 4) = 168, head Linear(8, 4) 36, output Linear(4, 10) 50.
    assert counts == [254, 5210]
    layers = api.get(f"/v1/experiments/{experiment['id']}/layer-metrics").json()
    assert {row["layer_name"] for row in layers} >= {"conv1", "conv3", "gru1", "head", "output"}
