"""How big a spec's work is, from the spec alone: parameters, the cost estimate and each run's compute and memory.

The spec checks them against its limits (``ACTLAB_MAX_PARAMETERS``, ``ACTLAB_MAX_COST`` for the
whole experiment, ``ACTLAB_MAX_RUN_MACS`` and ``ACTLAB_MAX_RUN_MEMORY_MB`` for each run of each
cell) and the stacked trainer plans memory with the parameter count, so the counts must equal what
the worker builds (``tests/training/test_models.py`` compares the parameters,
``tests/api/test_cost_model.py`` the multiply-accumulates with forward hooks on the built model).
Each model kind of the catalog has one counting function in ``_PARAMETER_COUNTS`` and one in
``_FORWARD_WORK``; the activation's learned parameters come from the catalog
(``learnable_parameters``, ``per_unit_mode``). No torch.

The run estimate (``estimate_run``), documented in README.md (Limits):

- Forward multiply-accumulates (MACs) of one example: every Linear, convolution and recurrent
  matmul of ``worker/training/models.py``. A convolution outputs floor((L + 2p - k) / s) + 1
  positions per side (``conv_output_length``; the default padding "same" at stride 1 keeps L) and
  costs in x out x kernel^d per output position; a pooling block then halves each side (rounded
  down). A recurrent layer reads one image row or signal sample per step: steps x (step features +
  hidden) x hidden x gates (1 rnn, 3 gru, 4 lstm; twice for a bidirectional gru/lstm, whose upper
  layers read 2 x hidden features; the Elman layer skips the recurrent matmul of its first step,
  whose state is zero). Norms, activations and
  pooling are elementwise and not counted; the hyper-network of an input-conditioned activation
  (dyrelu, meta_acon: two Linear maps per layer, per step in an Elman recurrence) is, for the
  activation of the spec with the most.
- A run: epochs x (3 x forward MACs x training examples + forward MACs x evaluated examples) (a step
  budget: 3 x forward MACs x steps x batch_size + evaluations x forward MACs x evaluated examples), plus
  the evaluation block's robustness passes over the test set (version 2: forward MACs x test examples
  x ``EvaluationSpec.forward_passes``, a scored pass per strength and 3 per FGSM or PGD step). The
  backward pass costs about twice the forward (gradients with respect to the inputs and to the
  weights, one matmul each), hence 3 per trained example: the "6N FLOPs per token" rule of Kaplan
  et al. 2020, "Scaling Laws for Neural Language Models", section 2.1. The test split (and the
  validation split) is evaluated forward only every epoch.
- Memory: the larger of a training batch, batch_size x (input + each layer's outputs x
  ``AUTOGRAD_COPIES``), and an evaluation batch without gradients, ``EVALUATION_BATCH_SIZE`` x
  the largest layer output x 2 (its input and output live together), in float32 (4 bytes).
  Weights and optimizer state are bounded by ``ACTLAB_MAX_PARAMETERS`` and not counted here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.catalog import ACTIVATIONS

if TYPE_CHECKING:
    from app.spec import ExperimentSpec
    from app.spec_models import CnnSpec, MlpSpec, RnnSpec

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


def conv_output_length(length: int, *, kernel: int, stride: int, padding: int | str) -> int:
    """Positions a convolution outputs along one side: floor((L + 2p - k) / s) + 1; padding "same" keeps L.

    The one home of the rule: spec validation, the parameter and work counts here, the stacked trainer's
    memory plan and the conv net's flattened width all read it (and torch's Conv1d/Conv2d agree, tested).
    "same" is only valid with stride 1 (the spec refuses it otherwise, as torch does).
    """
    if padding == "same":
        return length
    return (length + 2 * int(padding) - kernel) // stride + 1


def pooled_length(length: int, pooling: str) -> int:
    """Positions along one side after a conv block's pooling: halved, rounded down (none: unchanged)."""
    return length if pooling == "none" else length // 2


@dataclass(frozen=True)
class ConvLayerShape:
    """One conv block of a cnn: its kernel, stride and padding, and the positions per side in, out and pooled."""

    kernel: int
    stride: int
    padding: int | str
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    pooled_size: tuple[int, ...]


def cnn_layer_shapes(model: CnnSpec, shape: tuple[int, ...]) -> list[ConvLayerShape]:
    """Every conv block's geometry for inputs of ``shape`` (channels, *spatial), first to last.

    Sizes below one are returned as computed (the spec refuses them naming the block, ``app.spec``).
    """
    spatial = tuple(shape[1:])
    layers = []
    for kernel, stride, padding in model.conv_layers():
        output = tuple(conv_output_length(size, kernel=kernel, stride=stride, padding=padding) for size in spatial)
        pooled = tuple(pooled_length(size, model.pooling) for size in output)
        layers.append(ConvLayerShape(kernel, stride, padding, spatial, output, pooled))
        spatial = pooled
    return layers


def _cnn_parameters(model: CnnSpec, shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    channels = shape[0]
    dimensions = len(shape) - 1
    spatial = tuple(shape[1:])
    total = 0
    for width, layer in zip(model.channels, cnn_layer_shapes(model, shape), strict=True):
        total += channels * width * layer.kernel**dimensions + width
        if model.norm != "none":
            total += 2 * width
        channels = width
        spatial = layer.pooled_size
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
    # A bidirectional layer has a reverse copy of every weight, and the layer above reads both directions.
    directions = 2 if model.bidirectional else 1
    total = 0
    features = step_features
    for _ in range(model.layers):
        total += (
            directions
            * gates
            * (features * model.hidden_size + model.hidden_size * model.hidden_size + biases * model.hidden_size)
        )
        features = directions * model.hidden_size
    if model.cell == "rnn":
        return total + features * classes + classes, model.hidden_size * model.layers
    total += features * model.head_hidden + model.head_hidden + model.head_hidden * classes + classes
    return total, model.head_hidden


_PARAMETER_COUNTS: dict[str, ParameterCount] = {
    "mlp": _mlp_parameters,
    "cnn": _cnn_parameters,
    "rnn": _rnn_parameters,
}


@dataclass(frozen=True)
class ForwardWork:
    """One example's forward pass: multiply-accumulates, values kept for backward, the largest layer output."""

    macs: int
    kept: int
    largest: int


# (model spec, input shape, classes) -> one example's forward work.
ForwardCount = Callable[[Any, tuple[int, ...], int], ForwardWork]


def _dense_work(features: int, widths: list[int], classes: int, work: ForwardWork) -> ForwardWork:
    """``work`` followed by Linear layers of ``widths`` and the output layer, from ``features`` inputs."""
    macs, kept, largest = work.macs, work.kept, work.largest
    for width in [*widths, classes]:
        macs += features * width
        kept += width
        largest = max(largest, width)
        features = width
    return ForwardWork(macs, kept, largest)


def _mlp_work(model: MlpSpec, shape: tuple[int, ...], classes: int) -> ForwardWork:
    features = math.prod(shape)
    return _dense_work(features, list(model.hidden), classes, ForwardWork(0, 0, features))


def _cnn_work(model: CnnSpec, shape: tuple[int, ...], classes: int) -> ForwardWork:
    channels = shape[0]
    dimensions = len(shape) - 1
    spatial = tuple(shape[1:])
    macs, kept, largest = 0, 0, math.prod(shape)
    for width, layer in zip(model.channels, cnn_layer_shapes(model, shape), strict=True):
        # in x out x kernel taps at each output position (conv_output_length).
        outputs = width * math.prod(layer.output_size)
        macs += outputs * channels * layer.kernel**dimensions
        kept += outputs
        largest = max(largest, outputs)
        channels = width
        spatial = layer.pooled_size
    features = channels * math.prod(spatial)
    return _dense_work(features, list(model.hidden), classes, ForwardWork(macs, kept, largest))


def _rnn_work(model: RnnSpec, shape: tuple[int, ...], classes: int) -> ForwardWork:
    # Image rows (channels x width features) or signal samples (channels features), as _rnn_parameters reads them.
    steps = shape[1]
    features = shape[0] * shape[-1] if len(shape) == 3 else shape[0]
    hidden = model.hidden_size
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[model.cell]
    directions = 2 if model.bidirectional else 1
    macs, kept, largest = 0, 0, math.prod(shape)
    for _ in range(model.layers):
        if model.cell == "rnn":
            # The first step's state is zero: the Elman layer starts without W_hh h (RecurrentLayer.forward).
            macs += steps * features * hidden + (steps - 1) * hidden * hidden
            kept += steps * hidden
        else:
            macs += directions * steps * gates * (features + hidden) * hidden
            # Each step's gate values and output, per direction.
            kept += directions * steps * (gates + 1) * hidden
        largest = max(largest, directions * steps * gates * hidden)
        features = directions * hidden
    widths = [] if model.cell == "rnn" else [model.head_hidden]
    return _dense_work(features, widths, classes, ForwardWork(macs, kept, largest))


_FORWARD_WORK: dict[str, ForwardCount] = {
    "mlp": _mlp_work,
    "cnn": _cnn_work,
    "rnn": _rnn_work,
}

TRAINING_MACS_PER_FORWARD = 3
"""Forward + backward of a trained example in forward MACs (Kaplan et al. 2020, section 2.1: 6N FLOPs)."""
AUTOGRAD_COPIES = 4
"""Tensors of each layer's output size alive in a training step: its output, the normalised and the activated
values autograd keeps for backward, and the gradient during backward (``member_memory_bytes`` counts the same)."""
EVALUATION_BATCH_SIZE = 1024
"""Examples per evaluation batch: the trainers evaluate in batches of this size, and the memory estimate counts one."""
_FLOAT_BYTES = 4
_MIB = 2**20
RUN_MACS_RULE = (
    f"epochs x ({TRAINING_MACS_PER_FORWARD} x training examples + evaluated test and validation examples) x "
    f"forward MACs per example (a step budget: ({TRAINING_MACS_PER_FORWARD} x steps x batch_size + evaluations x "
    "evaluated test and validation examples) x forward MACs); the forward MACs count every Linear, every convolution at each output position "
    "(floor((L + 2 x padding - kernel) / stride) + 1 positions per side, padding same keeping L; pooling halves each "
    "side) and every recurrent step ((step features + hidden) x hidden x gates: 1 rnn, 3 gru, 4 lstm; x 2 directions "
    "when bidirectional); plus, with an evaluation block, forward MACs x test examples x (one pass per noise std, "
    f"{TRAINING_MACS_PER_FORWARD + 1} per FGSM epsilon, {TRAINING_MACS_PER_FORWARD} x pgd_steps + 1 per PGD epsilon)"
)
RUN_MEMORY_RULE = (
    f"the larger of a training batch (batch_size x (input + {AUTOGRAD_COPIES} x every layer's outputs)) and an "
    f"evaluation batch of {EVALUATION_BATCH_SIZE} (2 x the largest layer output), {_FLOAT_BYTES} bytes a value, in "
    "MiB; weights and optimizer state are not counted"
)


@dataclass(frozen=True)
class RunEstimate:
    """What one run of a spec does: forward MACs per example, MACs of the whole run, peak activation memory."""

    forward_macs: int
    macs: float
    memory_mb: float


def forward_work(spec: ExperimentSpec) -> ForwardWork:
    """One example's forward work for the spec's model (what ``worker.training.models`` builds)."""
    count = _FORWARD_WORK.get(spec.model.kind)
    if count is None:
        raise AssertionError(f"no forward count for model kind {spec.model.kind!r}")
    work = count(spec.model, spec.dataset.input_shape, spec.dataset.classes)
    return ForwardWork(work.macs + _hypernetwork_macs(spec), work.kept, work.largest)


def _hypernetwork_macs(spec: ExperimentSpec) -> int:
    """The largest forward MACs of one example's activation hyper-networks among the spec's activations.

    A hyper-network runs once per example on each layer (on each step of an Elman recurrence).
    """
    model = spec.model
    calls = spec.dataset.input_shape[1] if model.kind == "rnn" and model.cell == "rnn" else 1
    largest = 0
    for activation in spec.activations:
        hypernetwork = ACTIVATIONS[activation.canonical_name].hypernetwork
        if hypernetwork is not None:
            params = activation.resolved_params()
            macs = calls * sum(hypernetwork.macs(width, params) for width in activation_widths(model))
            largest = max(largest, macs)
    return largest


def estimate_run(spec: ExperimentSpec) -> RunEstimate:
    """The compute and memory of one run (one arm of one cell) of this spec; see the module docstring."""
    work = forward_work(spec)
    train_size = spec.dataset.train_size
    validation = (
        math.floor(spec.training.validation_fraction * train_size + 0.5) if spec.training.validation_fraction else 0
    )
    test = spec.dataset.test_size
    trained = train_size - validation
    training = spec.training
    if training.steps is None:
        macs = float(training.epochs) * work.macs * (TRAINING_MACS_PER_FORWARD * trained + validation + test)
    else:
        # steps x batch_size trained examples (a pass's last batch may be smaller: an upper bound), and every
        # evaluation's passes over the test and validation splits.
        examples_trained = float(training.steps * training.batch_size)
        macs = float(work.macs) * (
            TRAINING_MACS_PER_FORWARD * examples_trained + float(training.evaluations) * (validation + test)
        )
    macs += float(work.macs) * test * evaluation_passes(spec)
    per_example = math.prod(spec.dataset.input_shape) + AUTOGRAD_COPIES * work.kept
    training_bytes = spec.training.batch_size * per_example * _FLOAT_BYTES
    evaluation_bytes = EVALUATION_BATCH_SIZE * 2 * work.largest * _FLOAT_BYTES
    return RunEstimate(work.macs, macs, max(training_bytes, evaluation_bytes) / _MIB)


def format_amount(value: float) -> str:
    """A count in two significant digits as the limit messages write it: 9.3e14, 1e13, 512."""
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def estimate_parameters(spec: ExperimentSpec) -> int:
    """Trainable parameters of the model, computed from the spec without building it."""
    count = _PARAMETER_COUNTS.get(spec.model.kind)
    if count is None:
        raise AssertionError(f"no parameter count for model kind {spec.model.kind!r}")
    weights, units = count(spec.model, spec.dataset.input_shape, spec.dataset.classes)
    return weights + _learnable_per_model(spec, units)


def activation_widths(model: MlpSpec | CnnSpec | RnnSpec) -> list[int]:
    """Width (units or channels) of every activation module the model builds, first to last."""
    if model.kind == "mlp":
        return list(model.hidden)
    if model.kind == "cnn":
        return [*model.channels, *model.hidden]
    return [model.hidden_size] * model.layers if model.cell == "rnn" else [model.head_hidden]


def _learnable_per_model(spec: ExperimentSpec, units: int) -> int:
    """Upper bound of activation parameters in one model (per-unit PReLU dominates); exact for hyper-networks."""
    largest = 0
    for activation in spec.activations:
        info = ACTIVATIONS[activation.canonical_name]
        bound = info.learnable_parameters
        if info.hypernetwork is not None:
            params = activation.resolved_params()
            bound = sum(info.hypernetwork.parameters(width, params) for width in activation_widths(spec.model))
        if info.per_unit_mode is not None:
            parameter, per_unit = info.per_unit_mode
            if activation.resolved_params()[parameter] == per_unit:
                bound = units
        largest = max(largest, bound)
    return largest


def evaluation_passes(spec: ExperimentSpec) -> int:
    """Forward-pass equivalents over the test set of one run's robustness evaluation (0 without the block)."""
    return spec.evaluation.forward_passes() if spec.evaluation is not None else 0


def estimate_cost(spec: ExperimentSpec) -> float:
    """Arms x (epochs x training examples + robustness work) x parameters: a machine-independent work estimate
    (a step budget: steps x batch_size training examples).

    A trained example counts one (forward and backward), so the evaluation block's forward passes over the
    test set count a third each (``TRAINING_MACS_PER_FORWARD``).
    """
    arms = len(spec.activations) * len(spec.seeds)
    training = spec.training
    examples = (
        training.steps * training.batch_size
        if training.steps is not None
        else training.epochs * spec.dataset.train_size
    )
    examples_evaluated = spec.dataset.test_size * evaluation_passes(spec) / TRAINING_MACS_PER_FORWARD
    return float(arms) * (examples + examples_evaluated) * estimate_parameters(spec)


def estimate_experiment_cost(spec: ExperimentSpec) -> float:
    """The cost of every arm of the experiment: ``estimate_cost`` summed over its cells (one without factors)."""
    from app.spec_factors import expand_cells

    return sum(estimate_cost(cell.spec) for cell in expand_cells(spec))
