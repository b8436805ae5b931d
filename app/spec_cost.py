"""How big a spec's work is, from the spec alone: the model's parameter count and the cost estimate.

The spec checks both against its limits (``ACTLAB_MAX_PARAMETERS``, ``ACTLAB_MAX_COST``) and the
stacked trainer plans memory with the parameter count, so the counts must equal what the worker
builds (``tests/training/test_models.py`` compares them). Each model kind of the catalog has one
counting function in ``_PARAMETER_COUNTS``; the activation's learned parameters come from the
catalog (``learnable_parameters``, ``per_unit_mode``). No torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.catalog import ACTIVATIONS

if TYPE_CHECKING:
    from app.spec import CnnSpec, ExperimentSpec, MlpSpec, RnnSpec

# (model spec, input shape, classes) -> (weights and biases, units that apply the activation).
ParameterCount = Callable[[Any, tuple[int, ...], int], tuple[int, int]]


def _mlp_parameters(model: MlpSpec, shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    features = math.prod(shape)
    total = 0
    for width in model.hidden:
        total += features * width + width
        if model.norm != "none":
            total += 2 * width
        features = width
    return total + features * classes + classes, sum(model.hidden)


def _cnn_parameters(model: CnnSpec, shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    channels = shape[0]
    spatial = list(shape[1:])
    dimensions = len(spatial)
    total = 0
    for width in model.channels:
        total += channels * width * model.kernel_size**dimensions + width
        if model.norm != "none":
            total += 2 * width
        channels = width
        if model.pooling != "none":
            spatial = [max(1, size // 2) for size in spatial]
    features = channels * math.prod(spatial)
    for width in model.hidden:
        total += features * width + width
        features = width
    return total + features * classes + classes, sum(model.channels) + sum(model.hidden)


def _rnn_parameters(model: RnnSpec, shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    # A sequence step reads one image row (channels x width) or one signal sample.
    step_features = shape[0] * shape[-1] if len(shape) == 3 else shape[0]
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[model.cell]
    # nn.GRU/nn.LSTM carry two bias vectors per gate; the Elman cell of "rnn" needs only one.
    biases = 1 if model.cell == "rnn" else 2
    total = 0
    features = step_features
    for _ in range(model.layers):
        total += gates * (
            features * model.hidden_size + model.hidden_size * model.hidden_size + biases * model.hidden_size
        )
        features = model.hidden_size
    if model.cell == "rnn":
        return total + features * classes + classes, model.hidden_size * model.layers
    total += features * model.head_hidden + model.head_hidden + model.head_hidden * classes + classes
    return total, model.head_hidden


_PARAMETER_COUNTS: dict[str, ParameterCount] = {
    "mlp": _mlp_parameters,
    "cnn": _cnn_parameters,
    "rnn": _rnn_parameters,
}


def estimate_parameters(spec: ExperimentSpec) -> int:
    """Trainable parameters of the model, computed from the spec without building it."""
    count = _PARAMETER_COUNTS.get(spec.model.kind)
    if count is None:
        raise AssertionError(f"no parameter count for model kind {spec.model.kind!r}")
    weights, units = count(spec.model, spec.dataset.input_shape, spec.dataset.classes)
    return weights + _learnable_per_model(spec, units)


def _learnable_per_model(spec: ExperimentSpec, units: int) -> int:
    """Upper bound of activation parameters in one model (per-unit PReLU dominates)."""
    largest = 0
    for activation in spec.activations:
        info = ACTIVATIONS[activation.canonical_name]
        bound = info.learnable_parameters
        if info.per_unit_mode is not None:
            parameter, per_unit = info.per_unit_mode
            if activation.resolved_params()[parameter] == per_unit:
                bound = units
        largest = max(largest, bound)
    return largest


def estimate_cost(spec: ExperimentSpec) -> float:
    """Arms x epochs x training examples x parameters: a machine-independent work estimate."""
    arms = len(spec.activations) * len(spec.seeds)
    return float(arms) * spec.training.epochs * spec.dataset.train_size * estimate_parameters(spec)


def estimate_experiment_cost(spec: ExperimentSpec) -> float:
    """The cost of every arm of the experiment: ``estimate_cost`` summed over its cells (one without factors)."""
    from app.spec_factors import expand_cells

    return sum(estimate_cost(cell.spec) for cell in expand_cells(spec))
