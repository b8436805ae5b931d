"""Weight initialisation schemes, chosen per activation.

``initialise`` applies one scheme to every Linear/Conv weight and every recurrent weight
matrix of a model (biases zeroed, norm layers and activation parameters untouched) and
returns a description of what it did; ``resolve_init_scheme`` gives that description
without a model. Random draws come from the global torch generator, which the trainer
seeds, so a seed fixes the weights.

Recommended gains follow the activation's ``auto_init`` family in the catalog (the values
of ``torch.nn.init.calculate_gain`` where PyTorch has one): 1 for sigmoid, 5/3 for the
tanh-like units (tanh, softsign, hardtanh), sqrt(2) for the ReLU family and the smooth
ReLU-likes (GELU, SiLU, Mish, ...), sqrt(2 / (1 + a^2)) for leaky ReLU and PReLU with
slope a, and 3/4 for SELU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from app.catalog import ACTIVATIONS, INIT_SCHEMES
from app.spec import ActivationSpec
from worker.training.activations import ActivationModule

Method = Literal[
    "default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal", "orthogonal"
]

_AUTO_METHODS: dict[str, Method] = {
    "xavier_sigmoid": "xavier_normal",
    "xavier_tanh": "xavier_normal",
    "kaiming_relu": "kaiming_normal",
    "kaiming_leaky_relu": "kaiming_normal",
    "lecun_normal": "lecun_normal",
}
_NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)
# Norm layers keep their unit scale, activations their catalog start, embeddings their own scheme.
_SKIPPED_LAYERS = (*_NORM_LAYERS, ActivationModule, nn.Embedding)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class InitPlan:
    """One resolved scheme: the method, the gain it uses and the ReLU-family slope for Kaiming."""

    method: Method
    gain: float
    nonlinearity: Literal["relu", "leaky_relu"]
    slope: float

    def describe(self) -> str:
        """Human-readable form, e.g. 'kaiming_normal(leaky_relu, a=0.1)' or 'xavier_normal(gain=1.667)'."""
        if self.method == "default":
            return "default (PyTorch)"
        if self.method == "lecun_normal":
            return "lecun_normal"
        if self.method in ("kaiming_uniform", "kaiming_normal"):
            if self.nonlinearity == "leaky_relu":
                return f"{self.method}(leaky_relu, a={self.slope:g})"
            return f"{self.method}(relu)"
        return f"{self.method}(gain={self.gain:.4g})"


def _leaky_slope(activation: ActivationSpec) -> float | None:
    """The negative slope (initial, where learned) the catalog names for it; None for activations without one."""
    parameter = ACTIVATIONS[activation.canonical_name].slope_parameter
    return None if parameter is None else float(activation.resolved_params()[parameter])


def recommended_gain(activation: ActivationSpec) -> float:
    """The gain that keeps activations' variance steady through a layer of this activation."""
    family = ACTIVATIONS[activation.canonical_name].auto_init
    if family == "xavier_sigmoid":
        return 1.0
    if family == "xavier_tanh":
        return 5.0 / 3.0
    if family == "lecun_normal":
        return 3.0 / 4.0
    slope = _leaky_slope(activation)
    if family == "kaiming_leaky_relu" and slope is not None:
        return math.sqrt(2.0 / (1.0 + slope**2))
    return math.sqrt(2.0)


def plan_init(scheme: str, activation: ActivationSpec) -> InitPlan:
    """Resolve a scheme name ('auto' included) for an activation, or raise ValueError naming the allowed ones."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
    family = ACTIVATIONS[activation.canonical_name].auto_init
    method = _AUTO_METHODS[family] if scheme == "auto" else cast(Method, scheme)
    slope = _leaky_slope(activation)
    # Kaiming uses the leaky formula only where the activation has a negative slope; every other
    # activation gets the ReLU form, as "auto" does for the smooth ReLU-likes.
    leaky = slope is not None and family == "kaiming_leaky_relu"
    return InitPlan(
        method=method,
        gain=recommended_gain(activation),
        nonlinearity="leaky_relu" if leaky else "relu",
        slope=slope if leaky and slope is not None else 0.0,
    )


def resolve_init_scheme(scheme: str, activation: ActivationSpec) -> str:
    """Describe what ``initialise`` would do for this scheme and activation, without a model."""
    return plan_init(scheme, activation).describe()


def _fans(weight: Tensor) -> tuple[int, int]:
    receptive_field = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def _initialise_matrix(weight: Tensor, plan: InitPlan) -> None:
    """Fill one weight tensor (out, in, *kernel) in place."""
    if plan.method == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=plan.gain)
    elif plan.method == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=plan.gain)
    elif plan.method == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, a=plan.slope, mode="fan_in", nonlinearity=plan.nonlinearity)
    elif plan.method == "kaiming_normal":
        nn.init.kaiming_normal_(weight, a=plan.slope, mode="fan_in", nonlinearity=plan.nonlinearity)
    elif plan.method == "lecun_normal":
        fan_in, _ = _fans(weight)
        nn.init.normal_(weight, mean=0.0, std=1.0 / math.sqrt(fan_in))
    elif plan.method == "orthogonal":
        nn.init.orthogonal_(weight, gain=plan.gain)
    else:
        raise AssertionError(f"method {plan.method!r} has no initialiser")


def _gate_blocks(module: nn.Module, name: str, weight: Tensor) -> list[Tensor]:
    # PyTorch stacks the gates of GRU/LSTM (3 or 4 blocks of hidden_size rows); each gate is its
    # own (hidden, in) map, so fans and orthogonality are per gate, not per stacked matrix.
    if isinstance(module, nn.RNNBase) and name.startswith(("weight_ih", "weight_hh")):
        hidden = module.hidden_size
        if weight.shape[0] % hidden == 0 and weight.shape[0] > hidden:
            return list(weight.split(hidden, dim=0))
    return [weight]


def initialise(model: nn.Module, *, scheme: str, activation: ActivationSpec) -> str:
    """Apply the init scheme to the model's Linear, Conv and recurrent weights (biases zeroed); describe it."""
    plan = plan_init(scheme, activation)
    if plan.method == "default":
        return plan.describe()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _SKIPPED_LAYERS):
                continue
            if isinstance(module, _WEIGHT_LAYERS):
                _initialise_matrix(module.weight, plan)
                if module.bias is not None:
                    module.bias.zero_()
                continue
            # Recurrent layers and custom cells: their own 2-D "weight*" parameters (not their children's),
            # and their biases only when they had such weights.
            own = dict(module.named_parameters(recurse=False))
            matrices = {name: value for name, value in own.items() if name.startswith("weight") and value.dim() == 2}
            for name, parameter in matrices.items():
                for block in _gate_blocks(module, name, parameter):
                    _initialise_matrix(block, plan)
            if matrices:
                for name, parameter in own.items():
                    if name.startswith("bias"):
                        parameter.zero_()
    return plan.describe()
