"""Names and facts of activations, model kinds, optimizers, schedules, init schemes and factor paths.

Pure data, no torch: the one place that names them (datasets and input transforms in
``app.catalog_datasets``). The spec validates names against it,
``GET /v1/catalog`` serves it, and the worker's registries (``_BUILDERS`` in
``worker/training/activations.py`` and ``models.py``, ``_LOADERS`` in ``datasets.py``) are keyed
by it, each checked by a guard test. A rule that differs between entries (hardtanh's clip
bounds, the slope Kaiming reads, learnable parameter counts, spirals' class count and size)
is a field of the entry, never a name test elsewhere. See README, "How to add an activation,
a dataset or a model kind".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ParameterKind = Literal["float", "int", "choice", "bool"]
ParameterValue = float | int | str | bool
Family = Literal["classic", "modern", "learnable", "custom"]
Saturation = Literal["sigmoid", "tanh"]


@dataclass(frozen=True)
class ParameterInfo:
    """One tunable parameter of an activation or dataset."""

    name: str
    kind: ParameterKind
    default: ParameterValue
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActivationInfo:
    """Catalog entry of one activation function."""

    name: str
    family: Family
    description: str
    formula: str
    auto_init: str
    parameters: tuple[ParameterInfo, ...] = ()
    aliases: tuple[str, ...] = ()
    # "dead" means output never positive on the probe set; meaningful where that implies
    # a zero gradient (ReLU family), not for ELU-like units whose negative side still learns.
    can_die: bool = False
    saturation: Saturation | None = None
    learnable: bool = False
    reference: str = ""
    # Names of the lower and upper clip parameters: a spec must keep lower < upper, and the
    # saturation of a tanh-like unit is measured against them instead of +-1.
    bounds: tuple[str, str] | None = None
    # The parameter holding the negative slope that Kaiming initialisation uses (leaky ReLU family).
    slope_parameter: str | None = None
    # Upper bound of the activation's learned parameters in one model, for the cost estimate;
    # under ``per_unit_mode`` (parameter, value) there is one per unit and the bound is the units;
    # with a ``hypernetwork`` the count per layer width is exact and this field only marks that it learns.
    learnable_parameters: int = 0
    per_unit_mode: tuple[str, str] | None = None
    # Input-conditioned units (dynamic ReLU, Meta-ACON): a small hyper-network computes their
    # coefficients from the layer input, so ``formula`` is the function at a stated fixed context and
    # the parameter count depends on the layer widths (``Hypernetwork.parameters``).
    hypernetwork: Hypernetwork | None = None

    @property
    def input_conditioned(self) -> bool:
        """True where the unit's coefficients are computed from its input by a hyper-network."""
        return self.hypernetwork is not None

    @property
    def can_learn(self) -> bool:
        """True where a spec of it may carry learned parameters (learnable units, custom formulas)."""
        return self.learnable or self.family == "custom"


HYPERNETWORK_MIN_HIDDEN = 4
"""Fewest hidden units of an input-conditioned unit's hyper-network, however narrow its layer."""


@dataclass(frozen=True)
class Hypernetwork:
    """The hyper-network of an input-conditioned unit on a layer of C channels (hidden units or feature maps).

    context (C: the layer input averaged over positions, or the input vector itself) -> Linear(C, H)
    -> Linear(H, outputs x C), with H = max(HYPERNETWORK_MIN_HIDDEN, C // reduction); the unit also
    keeps ``own_per_channel`` learned values per channel. One home for the width rule: the torch
    modules and the parameter count of ``app.spec_cost`` both read it.
    """

    outputs_per_channel: int = 1
    # Parameter multiplying ``outputs_per_channel`` (dynamic ReLU's K pieces), if any.
    outputs_parameter: str | None = None
    own_per_channel: int = 0
    reduction_parameter: str = "reduction"

    def hidden(self, width: int, params: Mapping[str, ParameterValue]) -> int:
        """Hidden units H of the hyper-network on a layer of ``width`` channels."""
        return max(HYPERNETWORK_MIN_HIDDEN, width // int(params[self.reduction_parameter]))

    def outputs(self, params: Mapping[str, ParameterValue]) -> int:
        """Generated coefficients per channel."""
        factor = int(params[self.outputs_parameter]) if self.outputs_parameter else 1
        return self.outputs_per_channel * factor

    def parameters(self, width: int, params: Mapping[str, ParameterValue]) -> int:
        """Learned values of the unit on one layer: both Linear maps with biases, plus its own per channel."""
        hidden = self.hidden(width, params)
        generated = self.outputs(params) * width
        return width * hidden + hidden + hidden * generated + generated + self.own_per_channel * width

    def macs(self, width: int, params: Mapping[str, ParameterValue]) -> int:
        """Multiply-accumulates of the hyper-network for one example on one layer."""
        hidden = self.hidden(width, params)
        return width * hidden + hidden * self.outputs(params) * width


def float_parameter(
    name: str,
    default: float,
    description: str,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> ParameterInfo:
    return ParameterInfo(name, "float", default, description, minimum, maximum, exclusive_minimum)


ACTIVATIONS: dict[str, ActivationInfo] = {
    info.name: info
    for info in (
        ActivationInfo(
            "sigmoid",
            "classic",
            "Logistic sigmoid; saturates at both ends, the textbook cause of vanishing gradients.",
            "1 / (1 + exp(-x))",
            "xavier_sigmoid",
            saturation="sigmoid",
        ),
        ActivationInfo(
            "tanh",
            "classic",
            "Hyperbolic tangent; zero-centred but saturating.",
            "tanh(x)",
            "xavier_tanh",
            saturation="tanh",
        ),
        ActivationInfo(
            "relu",
            "classic",
            "Rectified linear unit; ReLU'(0) = 0. Units can die.",
            "max(0, x)",
            "kaiming_relu",
            can_die=True,
            reference="Nair & Hinton 2010",
        ),
        ActivationInfo(
            "leaky_relu",
            "classic",
            "ReLU with a small slope for negative inputs.",
            "x if x > 0 else negative_slope * x",
            "kaiming_leaky_relu",
            parameters=(float_parameter("negative_slope", 0.01, "Slope for x < 0.", 0.0, 1.0),),
            reference="Maas et al. 2013",
            slope_parameter="negative_slope",
        ),
        ActivationInfo(
            "elu",
            "classic",
            "Exponential linear unit.",
            "x if x > 0 else alpha * (exp(x) - 1)",
            "kaiming_relu",
            parameters=(
                float_parameter("alpha", 1.0, "Value approached for large negative x (as -alpha).", 0.0, 10.0, True),
            ),
            reference="Clevert et al. 2015",
        ),
        ActivationInfo(
            "selu",
            "modern",
            "Scaled ELU; self-normalising with LeCun normal initialisation.",
            "scale * (x if x > 0 else alpha * (exp(x) - 1)), alpha=1.6733, scale=1.0507",
            "lecun_normal",
            reference="Klambauer et al. 2017",
        ),
        ActivationInfo(
            "gelu",
            "modern",
            "Gaussian error linear unit.",
            "x * Phi(x)",
            "kaiming_relu",
            parameters=(
                ParameterInfo(
                    "approximate", "choice", "none", "Exact or tanh approximation.", choices=("none", "tanh")
                ),
            ),
            reference="Hendrycks & Gimpel 2016",
        ),
        ActivationInfo(
            "silu",
            "modern",
            "Sigmoid linear unit, also called Swish.",
            "x * sigmoid(x)",
            "kaiming_relu",
            aliases=("swish",),
            reference="Ramachandran et al. 2017",
        ),
        ActivationInfo(
            "mish",
            "modern",
            "Self-regularised non-monotonic activation.",
            "x * tanh(softplus(x))",
            "kaiming_relu",
            reference="Misra 2019",
        ),
        ActivationInfo(
            "softplus",
            "modern",
            "Smooth ReLU; linear above the threshold for numerical stability.",
            "log(1 + exp(beta * x)) / beta",
            "kaiming_relu",
            parameters=(
                float_parameter("beta", 1.0, "Sharpness.", 0.0, 100.0, True),
                float_parameter("threshold", 20.0, "Above beta * x > threshold the unit is linear.", 0.0, 100.0, True),
            ),
        ),
        ActivationInfo(
            "hardswish",
            "modern",
            "Piecewise-linear Swish from MobileNetV3.",
            "x * relu6(x + 3) / 6",
            "kaiming_relu",
            can_die=True,
            reference="Howard et al. 2019",
        ),
        ActivationInfo(
            "softsign",
            "modern",
            "x / (1 + |x|); saturates polynomially rather than exponentially.",
            "x / (1 + abs(x))",
            "xavier_tanh",
            saturation="tanh",
        ),
        ActivationInfo(
            "hardtanh",
            "modern",
            "Clipped identity.",
            "min(max(x, min_val), max_val)",
            "xavier_tanh",
            parameters=(
                float_parameter("min_val", -1.0, "Lower clip.", -100.0, 100.0),
                float_parameter("max_val", 1.0, "Upper clip.", -100.0, 100.0),
            ),
            saturation="tanh",
            bounds=("min_val", "max_val"),
        ),
        ActivationInfo(
            "relu6",
            "modern",
            "ReLU capped at 6.",
            "min(max(0, x), 6)",
            "kaiming_relu",
            can_die=True,
        ),
        ActivationInfo(
            "celu",
            "modern",
            "Continuously differentiable ELU.",
            "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
            "kaiming_relu",
            parameters=(float_parameter("alpha", 1.0, "Scale of the negative side.", 0.0, 10.0, True),),
            reference="Barron 2017",
        ),
        ActivationInfo(
            "prelu",
            "learnable",
            "Parametric ReLU: the negative slope is learned.",
            "x if x > 0 else a * x",
            "kaiming_leaky_relu",
            parameters=(
                ParameterInfo(
                    "mode", "choice", "layer", "One slope per layer or one per unit.", choices=("layer", "unit")
                ),
                float_parameter("init", 0.25, "Initial slope.", -1.0, 1.0),
            ),
            learnable=True,
            reference="He et al. 2015",
            slope_parameter="init",
            learnable_parameters=32,
            per_unit_mode=("mode", "unit"),
        ),
        ActivationInfo(
            "swish_beta",
            "learnable",
            "Swish with a learnable beta per layer.",
            "x * sigmoid(beta * x)",
            "kaiming_relu",
            parameters=(float_parameter("init", 1.0, "Initial beta.", -10.0, 10.0),),
            learnable=True,
            reference="Ramachandran et al. 2017",
            learnable_parameters=8 * 32,
        ),
        ActivationInfo(
            "pau",
            "learnable",
            "Pade activation unit P5/Q4 with the safe denominator 1 + sum |b_i x^i|, "
            "initialised to approximate leaky ReLU.",
            "(a0 + a1 x + ... + a5 x^5) / (1 + |b1 x| + |b2 x^2| + |b3 x^3| + |b4 x^4|)",
            "kaiming_relu",
            parameters=(
                float_parameter("negative_slope", 0.01, "Slope of the leaky ReLU the unit starts as.", 0.0, 1.0),
            ),
            learnable=True,
            reference="Molina et al. 2020",
            learnable_parameters=10 * 32,
        ),
        ActivationInfo(
            "dyrelu",
            "learnable",
            "Dynamic ReLU, variant B (DY-ReLU-B): y_c = max_k (a_c^k x_c + b_c^k) with channel-wise "
            "coefficients computed from the layer input by a hyper-network (input averaged over positions -> "
            "Linear -> ReLU -> Linear -> 2K per channel -> 2 sigmoid - 1, scaled by lambda_a and lambda_b around "
            "the initial a^1 = 1, a^k = 0 (k > 1), b^k = 0). Input-conditioned: the formula is the function at a "
            "zero hyper-network output, which is ReLU.",
            "max(x, 0) at a zero hyper-network output; in general max_k (a_k(input) * x + b_k(input))",
            "kaiming_relu",
            parameters=(
                ParameterInfo("pieces", "int", 2, "Linear pieces K of the maximum.", 1, 4),
                ParameterInfo(
                    "reduction", "int", 4, "Reduction ratio R of the hyper-network (H = max(4, C // R)).", 1, 64
                ),
                float_parameter("lambda_a", 1.0, "Range of the slopes a_k around their initial values.", 0.0, 10.0),
                float_parameter("lambda_b", 0.5, "Range of the intercepts b_k around 0.", 0.0, 10.0),
            ),
            learnable=True,
            reference="Chen et al. 2020, Dynamic ReLU (ECCV)",
            learnable_parameters=1,
            hypernetwork=Hypernetwork(outputs_per_channel=2, outputs_parameter="pieces"),
        ),
        ActivationInfo(
            "meta_acon",
            "learnable",
            "Meta-ACON-C: (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x with learned p1, p2 per channel and a "
            "channel-wise beta = sigmoid(Linear(Linear(input averaged over positions))) generated from the layer "
            "input (the authors' layout without their BatchNorm layers). Starts at p1 = 1, p2 = 0. "
            "Input-conditioned: the formula is the function at a zero hyper-network output, beta = 0.5.",
            "(p1 - p2) * x * sigmoid(beta * (p1 - p2) * x) + p2 * x, beta = sigmoid(hyper-network(input)); "
            "x * sigmoid(0.5 * x) at the start with a zero hyper-network output",
            "kaiming_relu",
            parameters=(
                ParameterInfo(
                    "reduction", "int", 16, "Reduction ratio r of the hyper-network (H = max(4, C // r)).", 1, 64
                ),
            ),
            learnable=True,
            reference="Ma et al. 2021, Activate or Not: Learning Customized Activation (CVPR)",
            learnable_parameters=1,
            hypernetwork=Hypernetwork(outputs_per_channel=1, own_per_channel=2),
        ),
        ActivationInfo(
            "custom",
            "custom",
            "A formula over x in a small safe language, optionally with learnable scalars.",
            "expression",
            "kaiming_relu",
            learnable_parameters=8 * 32,
        ),
    )
}

ACTIVATION_ALIASES: dict[str, str] = {alias: info.name for info in ACTIVATIONS.values() for alias in info.aliases}

# Functions a custom expression may call, with their arity: the parser reads this table, and the
# torch evaluator (worker/training/activations.py) and the numpy one (app/results/functions.py)
# implement exactly these names (guard tests check both).
EXPRESSION_FUNCTIONS: dict[str, int] = {
    "exp": 1,
    "log": 1,
    "sqrt": 1,
    "tanh": 1,
    "sigmoid": 1,
    "relu": 1,
    "abs": 1,
    "erf": 1,
    "softplus": 1,
    "sin": 1,
    "cos": 1,
    "min": 2,
    "max": 2,
}
EXPRESSION_CONSTANTS: dict[str, float] = {"pi": 3.141592653589793, "e": 2.718281828459045}


INIT_SCHEMES: dict[str, str] = {
    "auto": "Pick the scheme that fits each activation (see auto_init of each activation).",
    "default": "PyTorch's own layer initialisation.",
    "xavier_uniform": "Glorot uniform with the activation's recommended gain.",
    "xavier_normal": "Glorot normal with the activation's recommended gain.",
    "kaiming_uniform": "He uniform (fan_in) for the activation's ReLU-family slope.",
    "kaiming_normal": "He normal (fan_in) for the activation's ReLU-family slope.",
    "lecun_normal": "Normal with variance 1 / fan_in.",
    "orthogonal": "Orthogonal matrices with the activation's recommended gain.",
}

# What "auto" resolves to, as reported per run.
AUTO_INIT_DESCRIPTIONS: dict[str, str] = {
    "xavier_sigmoid": "xavier_normal(gain=1)",
    "xavier_tanh": "xavier_normal(gain=5/3)",
    "kaiming_relu": "kaiming_normal(relu)",
    "kaiming_leaky_relu": "kaiming_normal(leaky_relu, slope)",
    "lecun_normal": "lecun_normal",
}


@dataclass(frozen=True)
class ModelKindInfo:
    """Catalog entry of one model kind (its hyperparameters are its spec class in ``app.spec``)."""

    name: str
    description: str
    # Whether it needs image or sequence inputs, i.e. an input shape of (channels, length) or
    # (channels, height, width) rather than flat features.
    needs_image_or_sequence: bool = False


MODEL_KINDS: dict[str, ModelKindInfo] = {
    info.name: info
    for info in (
        ModelKindInfo("mlp", "Fully connected layers; optional batch/layer norm, dropout and residual connections."),
        ModelKindInfo(
            "cnn",
            "Conv blocks (Conv2d for images, Conv1d for 1-D signals) with pooling, then a linear head; version 2 "
            "sets kernel_sizes, strides and padding per block (a block outputs floor((L + 2 x padding - kernel) / "
            "stride) + 1 positions per side).",
            needs_image_or_sequence=True,
        ),
        ModelKindInfo(
            "rnn",
            "Recurrent net over image rows or the 1-D signal; cell rnn uses the activation inside the "
            "recurrence, gru/lstm keep their gates and use the activation in the head (version 2: bidirectional).",
            needs_image_or_sequence=True,
        ),
    )
}

OPTIMIZERS: dict[str, str] = {
    "adam": "Adam; training.betas (default [0.9, 0.999]) and training.eps (1e-8) set its internals.",
    "adamw": "AdamW (decoupled weight decay); training.betas and training.eps as for adam.",
    "sgd": "SGD with optional momentum and Nesterov; training.dampening (default 0) damps the momentum.",
    "rmsprop": "RMSprop with optional momentum; training.alpha (default 0.99) and training.eps (1e-8).",
}

# The optimiser internals a version-2 spec may set in ``training`` (defaults torch's, so a spec without them trains as
# before) and the optimizers each applies to: naming one for another optimizer is a 422.
OPTIMIZER_SETTINGS: dict[str, tuple[str, ...]] = {
    "betas": ("adam", "adamw"),
    "eps": ("adam", "adamw", "rmsprop"),
    "alpha": ("rmsprop",),
    "dampening": ("sgd",),
}


def optimizer_settings(optimizer: str) -> tuple[str, ...]:
    """The ``OPTIMIZER_SETTINGS`` that apply to one optimizer."""
    return tuple(name for name, optimizers in OPTIMIZER_SETTINGS.items() if optimizer in optimizers)


SCHEDULES: dict[str, str] = {
    "none": "Constant learning rate.",
    "step": "Multiply the rate by gamma every step_size epochs (evaluations with a step budget).",
    "cosine": "Cosine annealing to zero over the run's epochs (evaluations with a step budget).",
}

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# Diagnostic thresholds, reported with the catalog so users know what the flags mean.
VANISHING_RATIO = 1e-3
EXPLODING_RATIO = 1e3
SIGMOID_SATURATION_BOUNDS = (0.01, 0.99)
TANH_SATURATION_LEVEL = 0.99
SATURATED_SHARE = 0.9
PROBE_EXAMPLES = 1000


def canonical_activation_name(name: str) -> str | None:
    """Map a name or alias to its catalog name, or None when unknown."""
    if name in ACTIVATIONS:
        return name
    return ACTIVATION_ALIASES.get(name)


def activation_names() -> list[str]:
    """All accepted activation names, aliases included, sorted."""
    return sorted([*ACTIVATIONS, *ACTIVATION_ALIASES])


@dataclass(frozen=True)
class FactorPathInfo:
    """One spec path a version-2 spec may vary as a factor (``factors``); each level is validated as that field."""

    path: str
    description: str
    # Model kinds the field exists on (empty: every kind); a cell of another kind fails its validation.
    model_kinds: tuple[str, ...] = ()
    # True where a level changes the data itself: seeds then pair activations within a cell only.
    changes_data: bool = False


# ``dataset.params.*`` stands for every parameter of the dataset in force (``dataset.params.noise``).
FACTOR_PATHS: dict[str, FactorPathInfo] = {
    info.path: info
    for info in (
        FactorPathInfo("dataset", "A whole dataset block (name and parameters).", changes_data=True),
        FactorPathInfo(
            "dataset.name", "The dataset; the base spec's dataset parameters apply to each.", changes_data=True
        ),
        FactorPathInfo("dataset.params.*", "One parameter of the dataset (see its catalog entry).", changes_data=True),
        FactorPathInfo(
            "dataset.transforms",
            "The input transforms, each level a whole list ([] for none; see transforms).",
            changes_data=True,
        ),
        FactorPathInfo("model", "A whole model block, so kinds may differ between cells."),
        FactorPathInfo("model.hidden", "Hidden layer widths (mlp; fully connected widths of a cnn).", ("mlp", "cnn")),
        FactorPathInfo("model.norm", "Normalisation: none, batch or layer.", ("mlp", "cnn")),
        FactorPathInfo("model.dropout", "Dropout probability.", ("mlp", "cnn")),
        FactorPathInfo("model.residual", "Skip connections between hidden layers of equal width.", ("mlp",)),
        FactorPathInfo("model.channels", "Channels per conv block.", ("cnn",)),
        FactorPathInfo("model.kernel_sizes", "Kernel size per conv block.", ("cnn",)),
        FactorPathInfo("model.strides", "Stride per conv block.", ("cnn",)),
        FactorPathInfo("model.padding", "Zero padding per conv block (integers or 'same').", ("cnn",)),
        FactorPathInfo("model.cell", "Recurrent cell: rnn, gru or lstm.", ("rnn",)),
        FactorPathInfo("model.bidirectional", "Both directions in each gru/lstm layer (true/false).", ("rnn",)),
        FactorPathInfo("training.optimizer", "The optimizer."),
        FactorPathInfo("training.lr", "The learning rate."),
        FactorPathInfo("training.batch_size", "The mini-batch size."),
        FactorPathInfo("training.init", "The initialisation scheme."),
        FactorPathInfo("training.grad_clip", "Clip of the global gradient norm (null: none)."),
        FactorPathInfo("training.weight_decay", "Weight decay."),
        FactorPathInfo("training.schedule", "The learning-rate schedule."),
        FactorPathInfo("training.betas", "Adam/AdamW's [beta1, beta2] (version 2; adam and adamw only)."),
        FactorPathInfo("training.eps", "The optimizer's epsilon (version 2; adam, adamw and rmsprop only)."),
        FactorPathInfo("training.alpha", "RMSprop's smoothing constant (version 2; rmsprop only)."),
        FactorPathInfo("training.dampening", "SGD's momentum dampening (version 2; sgd only)."),
        FactorPathInfo("training.steps", "The step budget: optimiser steps instead of epochs (version 2)."),
        FactorPathInfo("training.eval_every", "Optimiser steps between evaluations of a step budget (version 2)."),
    )
}


def factor_path_entry(path: str) -> FactorPathInfo | None:
    """The catalog entry of a factor path (``dataset.params.<name>`` maps to ``dataset.params.*``), or None."""
    if path in FACTOR_PATHS and not path.endswith("*"):
        return FACTOR_PATHS[path]
    prefix, _, name = path.rpartition(".")
    if prefix == "dataset.params" and name.isidentifier():
        return FACTOR_PATHS["dataset.params.*"]
    return None
