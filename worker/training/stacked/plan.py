"""Planning a stacked run: whether a spec's arms can stack, whether it pays, and how members split by memory.

A stack needs the same shapes for every member and an exact stacked form of every layer (see
``worker.training.stacked``): mlp and cnn models without dropout. Whether stacking is also faster
was measured in bench/RESULTS.md; ``member_memory_bytes`` is the estimate the worker divides its
device memory by (``group_members``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from app.spec import ExperimentSpec
from app.spec_cost import EVALUATION_BATCH_SIZE, cnn_layer_shapes, estimate_parameters
from app.spec_models import CnnSpec, MlpSpec
from worker.training.trainer import resolve_device

Member = tuple[int, int]
"""(activation_index, seed) of one member."""

_FLOAT_BYTES = 4
# Largest MLP (parameters per member) for which stacking is recommended on a CPU; see stacking_recommended.
_CPU_STACKING_MAX_PARAMETERS = 100_000
# Optimizer state tensors per parameter element (Adam/AdamW: two moments; SGD/RMSprop: at most two).
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 2}


def can_stack(spec: ExperimentSpec) -> tuple[bool, str]:
    """Whether the spec's arms can train as one stacked model; the reason when they cannot."""
    model = spec.model
    if isinstance(model, MlpSpec | CnnSpec):
        if model.dropout > 0:
            return False, (
                "model.dropout > 0: the unstacked dropout masks come from each arm's own global random stream, "
                "which a stacked model cannot reproduce; the arms train one after another"
            )
        return True, ""
    return False, f"model kind {model.kind!r} has no stacked form (mlp and cnn do); the arms train one after another"


def stacking_recommended(spec: ExperimentSpec, *, device: str | torch.device) -> tuple[bool, str]:
    """Whether stacking is expected to train this spec's grid faster on this device; the reason either way."""
    stackable, reason = can_stack(spec)
    if not stackable:
        return False, reason
    target = torch.device(device) if isinstance(device, str) and device != "auto" else resolve_device(device)
    if target.type == "cuda":
        return True, "on a GPU a stacked grid fills the device that one small model leaves idle"
    if isinstance(spec.model, CnnSpec):
        # bench/RESULTS.md: 0.45x (CIFAR-shaped) to about 1x (MNIST-1D) the speed of sequential runs.
        return False, (
            "on a CPU convolutions are bound by memory traffic, which stacking does not reduce, and the grouped "
            "layout adds copies: stacked conv grids measured no faster than sequential runs"
        )
    parameters = estimate_parameters(spec)
    if parameters > _CPU_STACKING_MAX_PARAMETERS:
        # bench/RESULTS.md: 0.85x to 1.4x for an MNIST 784-256-256 MLP (269k parameters): compute-bound.
        return False, (
            f"on a CPU an MLP of {parameters:,} parameters is bound by arithmetic, which stacking does not reduce "
            f"(it pays off up to about {_CPU_STACKING_MAX_PARAMETERS:,})"
        )
    # bench/RESULTS.md: about 1.7x for the MNIST-1D 128-128 MLP (23k parameters).
    return True, "on a CPU a small MLP is bound by per-step overhead, which a stacked grid shares among its members"


def member_memory_bytes(spec: ExperimentSpec) -> int:
    """A generous estimate of the device memory one stacked member needs while training."""
    training = spec.training
    parameters = estimate_parameters(spec)
    # Stacked weights and gradients, the member's ordinary template model, and the optimizer state.
    parameter_bytes = parameters * _FLOAT_BYTES * (3 + _OPTIMIZER_STATES[training.optimizer])
    shape = spec.dataset.input_shape
    model = spec.model
    # Per example: the input, then each layer's output kept for backward (pre-norm, post-norm,
    # post-activation and its gradient: about four copies).
    units = math.prod(shape)
    if isinstance(model, MlpSpec):
        units += 4 * sum(model.hidden)
    elif isinstance(model, CnnSpec):
        # Each block's output positions by the spec's rule (strides, padding; app.spec_cost.cnn_layer_shapes).
        for width, layer in zip(model.channels, cnn_layer_shapes(model, shape), strict=True):
            units += 4 * width * math.prod(layer.output_size)
        units += 4 * sum(model.hidden)
    else:
        directions = 2 if model.bidirectional else 1
        units += 4 * directions * model.hidden_size * shape[-1] * model.layers
    examples = max(training.batch_size, EVALUATION_BATCH_SIZE)
    # Twice: a captured CUDA graph keeps its own pool next to the eager step's.
    activation_bytes = 2 * examples * units * _FLOAT_BYTES
    return parameter_bytes + activation_bytes


def group_members(spec: ExperimentSpec, members: Sequence[Member], memory_budget_bytes: int) -> list[list[Member]]:
    """Split members into stackable chunks that fit the budget: activation-major, sizes differing by at most one."""
    if memory_budget_bytes <= 0:
        raise ValueError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")
    ordered = sorted(members, key=lambda member: member[0])
    if not ordered:
        return []
    per_chunk = max(1, memory_budget_bytes // max(member_memory_bytes(spec), 1))
    chunks = math.ceil(len(ordered) / per_chunk)
    base, extra = divmod(len(ordered), chunks)
    result: list[list[Member]] = []
    start = 0
    for index in range(chunks):
        size = base + (1 if index < extra else 0)
        result.append(list(ordered[start : start + size]))
        start += size
    return result
