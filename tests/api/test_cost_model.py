"""The per-run cost model: MACs and memory as training really spends them, and the limits built on them.

Each model's forward multiply-accumulates are checked twice: against a count written out by hand
here, and against a direct count by forward hooks on the network ``worker.training.models`` builds
(Linear, Conv1d/Conv2d and GRU/LSTM modules, one example). The hostile specs of issue 14 (a 10-day
MLP, an RNN of hidden size 4096, a CNN without pooling at batch 8192) are refused with a 422 that
names the limit, and every example in examples/ still validates under the default limits.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.catalog import MODEL_KINDS
from app.config import SpecLimits
from app.spec import ExperimentSpec
from app.spec_cost import (
    AUTOGRAD_COPIES,
    TRAINING_MACS_PER_FORWARD,
    estimate_run,
    format_amount,
)
from app.spec_factors import expand_cells
from tests.api.conftest import small_spec
from worker.training.models import build_model

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.json"))


def make_spec(dataset: str, model: dict[str, Any], **training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {"dataset": {"name": dataset}, "model": model, "activations": ["relu"], "seeds": [0], "training": training}
    )


def hook_macs(spec: ExperimentSpec) -> int:
    """MACs of one example through the built network, counted by forward hooks on its matmul modules."""
    network = build_model(
        spec, spec.activations[0], input_shape=spec.dataset.input_shape, classes=spec.dataset.classes
    ).eval()
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            total += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.GRU | nn.LSTM):
            steps = inputs[0].shape[1]
            for layer in range(module.num_layers):
                ih, hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
                total += steps * (ih.numel() + hh.numel())

    for module in network.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.GRU | nn.LSTM):
            module.register_forward_hook(count)
    with torch.no_grad():
        network(torch.randn(1, *spec.dataset.input_shape))
    return total


# Hand counts of one example's forward MACs. digits: 1x8x8 images, 10 classes; mnist1d: 1x40 signals.
HAND_COUNTS = [
    pytest.param("digits", {"kind": "mlp", "hidden": [32, 16]}, 64 * 32 + 32 * 16 + 16 * 10, id="mlp"),
    pytest.param(
        "digits",
        {"kind": "mlp", "hidden": [12, 12], "norm": "batch", "residual": True},
        64 * 12 + 12 * 12 + 12 * 10,
        id="mlp norm residual",
    ),
    pytest.param(
        "digits",
        {"kind": "cnn", "channels": [4, 8], "kernel_size": 3, "pooling": "max"},
        # conv1 on 8x8 positions, pool to 4x4, conv2 on 4x4, pool to 2x2, output from 8x2x2 features.
        8 * 8 * (1 * 4 * 9) + 4 * 4 * (4 * 8 * 9) + 8 * 2 * 2 * 10,
        id="cnn pooling",
    ),
    pytest.param(
        "digits",
        {"kind": "cnn", "channels": [4, 8], "kernel_size": 3, "pooling": "none"},
        # padding "same": both convs on all 8x8 positions, output from 8x8x8 features.
        8 * 8 * (1 * 4 * 9) + 8 * 8 * (4 * 8 * 9) + 8 * 8 * 8 * 10,
        id="cnn no pooling",
    ),
    pytest.param(
        "digits",
        {"kind": "cnn", "channels": [3], "kernel_size": 4, "pooling": "avg", "hidden": [6]},
        8 * 8 * (1 * 3 * 16) + 3 * 4 * 4 * 6 + 6 * 10,
        id="cnn even kernel hidden",
    ),
    pytest.param(
        "mnist1d",
        {"kind": "cnn", "channels": [4, 8], "kernel_size": 5, "pooling": "max"},
        40 * (1 * 4 * 5) + 20 * (4 * 8 * 5) + 8 * 10 * 10,
        id="cnn 1d",
    ),
    pytest.param(
        "mnist1d",
        {"kind": "rnn", "cell": "rnn", "hidden_size": 16},
        # 40 steps of 1 feature; W_hh is skipped on the first step (zero state).
        40 * 1 * 16 + 39 * 16 * 16 + 16 * 10,
        id="rnn",
    ),
    pytest.param(
        "digits",
        {"kind": "rnn", "cell": "rnn", "hidden_size": 10, "layers": 2},
        # 8 rows of 8 features.
        (8 * 8 * 10 + 7 * 10 * 10) + (8 * 10 * 10 + 7 * 10 * 10) + 10 * 10,
        id="rnn two layers",
    ),
    pytest.param(
        "mnist1d",
        {"kind": "rnn", "cell": "lstm", "hidden_size": 16, "head_hidden": 8},
        40 * 4 * (1 + 16) * 16 + 16 * 8 + 8 * 10,
        id="lstm",
    ),
    pytest.param(
        "digits",
        {"kind": "rnn", "cell": "gru", "hidden_size": 10, "layers": 2, "head_hidden": 7},
        8 * 3 * (8 + 10) * 10 + 8 * 3 * (10 + 10) * 10 + 10 * 7 + 7 * 10,
        id="gru two layers",
    ),
]


def test_every_catalog_model_kind_has_a_hand_count() -> None:
    models = [param.values[1] for param in HAND_COUNTS]
    assert {model["kind"] for model in models if isinstance(model, dict)} == set(MODEL_KINDS)


@pytest.mark.parametrize(("dataset", "model", "by_hand"), HAND_COUNTS)
def test_forward_macs_equal_a_hand_count_and_a_hook_count_on_the_built_model(
    dataset: str, model: dict[str, Any], by_hand: int
) -> None:
    spec = make_spec(dataset, model)
    estimate = estimate_run(spec).forward_macs
    assert estimate == by_hand
    assert estimate == pytest.approx(hook_macs(spec), rel=0.02)


def test_a_run_costs_epochs_times_three_per_trained_example_and_one_per_evaluated_example() -> None:
    model = {"kind": "cnn", "channels": [4, 8], "pooling": "max"}
    forward = estimate_run(make_spec("digits", model)).forward_macs
    # digits: 1,437 training and 360 test examples; a validation fraction of 0.2 holds out 287 of the 1,437.
    plain = estimate_run(make_spec("digits", model, epochs=7))
    held_out = estimate_run(make_spec("digits", model, epochs=7, validation_fraction=0.2))
    assert TRAINING_MACS_PER_FORWARD == 3
    assert plain.macs == 7 * forward * (3 * 1437 + 360)
    assert held_out.macs == 7 * forward * (3 * 1150 + 287 + 360)


def test_memory_is_the_batch_times_every_layer_output_kept_for_backward() -> None:
    # digits MLP 32-16: per example the input (64) and 4 copies of each output (32 + 16 + 10).
    spec = make_spec("digits", {"kind": "mlp", "hidden": [32, 16]}, batch_size=4096)
    assert AUTOGRAD_COPIES == 4
    assert estimate_run(spec).memory_mb == pytest.approx(4096 * (64 + 4 * 58) * 4 / 2**20)
    # At batch 8 the evaluation batch of 1,024 is larger: its largest tensor (the 64 inputs) twice.
    small_batch = make_spec("digits", {"kind": "mlp", "hidden": [32, 16]}, batch_size=8)
    assert estimate_run(small_batch).memory_mb == pytest.approx(1024 * 2 * 64 * 4 / 2**20)


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("digits", {"kind": "mlp", "hidden": [64, 64], "norm": "batch"}),
        ("digits", {"kind": "cnn", "channels": [8, 16], "pooling": "none", "norm": "layer"}),
        ("mnist1d", {"kind": "rnn", "cell": "rnn", "hidden_size": 32, "layers": 2}),
        ("mnist1d", {"kind": "rnn", "cell": "lstm", "hidden_size": 32}),
    ],
)
def test_memory_estimate_bounds_what_autograd_saves_for_a_training_batch(dataset: str, model: dict[str, Any]) -> None:
    batch = 256
    spec = make_spec(dataset, model, batch_size=batch)
    network = build_model(spec, spec.activations[0], input_shape=spec.dataset.input_shape, classes=10).train()
    parameters = {parameter.data_ptr() for parameter in network.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in parameters:
            saved[tensor.data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = network(torch.randn(batch, *spec.dataset.input_shape))
    measured = sum(saved.values()) + logits.numel() * 4
    estimated = estimate_run(spec).memory_mb * 2**20
    # An upper bound that is not wildly above: autograd's saved tensors plus the logits.
    assert measured <= estimated <= 6 * measured


def unpooled_cifar_cnn(*, epochs: int) -> dict[str, Any]:
    return {
        "dataset": {"name": "cifar10"},
        "model": {"kind": "cnn", "channels": [128] * 6, "pooling": "none"},
        "training": {"epochs": epochs, "batch_size": 8192},
    }


HOSTILE = [
    pytest.param(
        # About 18.4 million parameters for 200 epochs of MNIST: 7e14 MACs.
        {"dataset": {"name": "mnist"}, "model": {"kind": "mlp", "hidden": [2048] * 5}, "training": {"epochs": 200}},
        "ACTLAB_MAX_RUN_MACS",
        id="ten-day mlp",
    ),
    pytest.param(
        # 28 steps of a 4096 x 4096 recurrence per image: 1.7e16 MACs.
        {"dataset": {"name": "mnist"}, "model": {"kind": "rnn", "hidden_size": 4096}, "training": {"epochs": 200}},
        "ACTLAB_MAX_RUN_MACS",
        id="rnn hidden 4096",
    ),
    # Six 128-channel convs on every CIFAR-10 position: 2.4e16 MACs (and 96 GiB of activations).
    pytest.param(unpooled_cifar_cnn(epochs=200), "ACTLAB_MAX_RUN_MACS", id="cnn without pooling"),
    # The same CNN for one epoch is within the MACs limit, but not its memory.
    pytest.param(unpooled_cifar_cnn(epochs=1), "ACTLAB_MAX_RUN_MEMORY_MB", id="cnn batch 8192 one epoch"),
]


@pytest.mark.parametrize(("overrides", "setting"), HOSTILE)
def test_hostile_specs_get_a_422_naming_the_limit_and_the_numbers(
    client: TestClient, overrides: dict[str, Any], setting: str
) -> None:
    payload = small_spec(activations=["relu"], seeds=[0], **overrides)
    # The old experiment-wide cost let each of them through.
    old_cost = SpecLimits().model_copy(update={"max_run_macs": math.inf, "max_run_memory_mb": 2**62})
    ExperimentSpec.model_validate(payload, context={"limits": old_cost})

    response = client.post("/v1/experiments", json=payload)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    estimate = estimate_run(ExperimentSpec.model_validate(payload, context={"limits": old_cost}))
    if setting == "ACTLAB_MAX_RUN_MACS":
        expected = f"estimated {format_amount(estimate.macs)} MACs, limit 2e14 (setting ACTLAB_MAX_RUN_MACS)"
        assert expected in error["msg"]
        assert error["msg"].startswith("model and training.epochs:")
    else:
        assert f"estimated {estimate.memory_mb:,.0f} MiB, limit 8,192 MiB (setting {setting})" in error["msg"]
        assert error["msg"].startswith("model and training.batch_size:")


def test_the_message_reads_as_the_issue_asks() -> None:
    payload = small_spec(
        dataset={"name": "mnist"}, model={"kind": "mlp", "hidden": [2048] * 5}, training={"epochs": 200}
    )
    limits = SpecLimits(max_run_macs=1e13)
    with pytest.raises(ValueError, match=r"estimated 7e14 MACs, limit 1e13 \(setting ACTLAB_MAX_RUN_MACS\)"):
        ExperimentSpec.model_validate(payload, context={"limits": limits})


def test_a_factorial_cell_over_the_run_limit_is_refused_naming_the_cell(client: TestClient) -> None:
    payload = small_spec(
        version=2,
        dataset={"name": "mnist"},
        activations=["relu"],
        seeds=[0],
        training={"epochs": 200},
        factors={"model.hidden": [[32], [2048] * 5]},
    )
    response = client.post("/v1/experiments", json=payload)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    # The level that alone puts its cells over the limit is named by path and index.
    assert error["loc"] == "factors.model.hidden.1"
    assert error["msg"].startswith("model and training.epochs: one run is estimated 7e14 MACs")
    assert "(setting ACTLAB_MAX_RUN_MACS)" in error["msg"]


def test_an_operator_can_lower_the_run_limits() -> None:
    spec = make_spec("digits", {"kind": "cnn", "channels": [8, 16]}, epochs=3)
    payload = spec.model_dump(mode="json")
    run = estimate_run(spec)
    with pytest.raises(ValueError, match="ACTLAB_MAX_RUN_MACS"):
        ExperimentSpec.model_validate(payload, context={"limits": SpecLimits(max_run_macs=run.macs / 2)})
    with pytest.raises(ValueError, match="ACTLAB_MAX_RUN_MEMORY_MB"):
        ExperimentSpec.model_validate(payload, context={"limits": SpecLimits(max_run_memory_mb=1)})


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_validates_under_the_default_limits_in_every_cell(path: Path) -> None:
    spec = ExperimentSpec.model_validate(json.loads(path.read_text()), context={"limits": SpecLimits()})
    for cell in expand_cells(spec):
        run = estimate_run(cell.spec)
        assert run.macs <= SpecLimits().max_run_macs
        assert run.memory_mb <= SpecLimits().max_run_memory_mb


def test_the_readme_says_how_long_every_example_takes() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(examples/[^`]+)` \|.*\| (about [0-9.]+ (?:s|min)|under a minute) \|$", readme, re.M))
    shipped = {f"examples/{path.name}" for path in (Path(__file__).parents[2] / "examples").iterdir()}
    assert len(EXAMPLES) >= 6  # the validation test above covers every spec file, so the glob must find them
    assert set(rows) == shipped, rows


def test_the_catalog_documents_the_run_limits(client: TestClient) -> None:
    limits = {entry["name"]: entry for entry in client.get("/v1/catalog").json()["limits"]}
    assert limits["max_run_macs"]["value"] == 2e14
    assert limits["max_run_macs"]["environment_variable"] == "ACTLAB_MAX_RUN_MACS"
    assert "convolution position and recurrent step" in limits["max_run_macs"]["description"]
    assert limits["max_run_memory_mb"]["value"] == 8192
    assert limits["max_run_memory_mb"]["environment_variable"] == "ACTLAB_MAX_RUN_MEMORY_MB"
    assert limits["max_cost"]["environment_variable"] == "ACTLAB_MAX_COST"
    run_cost = client.get("/v1/catalog").json()["run_cost"]
    assert (run_cost["training_macs_per_forward"], run_cost["autograd_copies"]) == (3, 4)
    assert "every recurrent step" in run_cost["macs"]
