"""Which activations did not train, and the spec changes the service can run next to make them train.

Pure Python (no torch, no numpy). The rules (docs/statistics.md):

- Chance accuracy is the accuracy of always predicting the most frequent training class. Where the class
  counts are known they give it (largest count over the total); the service does not store them, so the
  catalog's datasets are treated as balanced and chance is 1 / classes (exact for cifar10 and
  fashion_mnist; the most frequent class of the stratified digits split is 0.102, MNIST's 0.112).
- An activation did not train when its mean final test accuracy over its seeds is at most chance plus
  ``chance_margin`` (setting ACTLAB_CHANCE_MARGIN, default 0.05): on 10 balanced classes 0.15 or less.
- Remedies follow from the measured causes, each a concrete change to the experiment's spec, given as
  the JSON to merge into it, and only where the spec does not already have it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.catalog import ACTIVATIONS, canonical_activation_name
from app.spec import ExperimentSpec
from app.spec_models import MlpSpec, RnnSpec

DEFAULT_CHANCE_MARGIN = 0.05
# The learning rate a remedy proposes is the current one divided by this.
LEARNING_RATE_DIVISOR = 10.0
# The gradient-norm clip a remedy proposes where the spec has none.
PROPOSED_GRADIENT_CLIP = 1.0
# Causes the measured diagnostics can name (see app/results/diagnostics.py).
CAUSES: tuple[str, ...] = ("vanishing", "exploding", "dead", "saturated", "diverged", "unexplained")
NON_SATURATING_REPLACEMENTS: tuple[dict[str, Any] | str, ...] = (
    {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
    "elu",
)


def chance_accuracy(*, classes: int | None, class_counts: Sequence[int] | None = None) -> float | None:
    """Accuracy of always predicting the most frequent training class; None when the classes are unknown."""
    if class_counts:
        total = sum(class_counts)
        return max(class_counts) / total if total > 0 else None
    if classes is None or classes < 2:
        return None
    return 1.0 / classes


def did_not_train(accuracy: float | None, *, chance: float | None, margin: float = DEFAULT_CHANCE_MARGIN) -> bool:
    """True when the final accuracy is at most chance plus the margin."""
    if accuracy is None or chance is None or not math.isfinite(accuracy):
        return False
    return accuracy <= chance + margin


@dataclass(frozen=True)
class TrainingSetup:
    """The facts of the spec that remedies read; every field None when the spec is unknown."""

    model_kind: str | None = None
    norm: str | None = None
    residual: bool | None = None
    rnn_cell: str | None = None
    lr: float | None = None
    init: str | None = None
    grad_clip: float | None = None

    @classmethod
    def from_spec(cls, spec: ExperimentSpec | None) -> TrainingSetup:
        """The setup of a stored spec (an empty one without a spec)."""
        if spec is None:
            return cls()
        model = spec.model
        return cls(
            model_kind=model.kind,
            norm=None if isinstance(model, RnnSpec) else model.norm,
            residual=model.residual if isinstance(model, MlpSpec) else None,
            rnn_cell=model.cell if isinstance(model, RnnSpec) else None,
            lr=float(spec.training.lr),
            init=spec.training.init,
            grad_clip=float(spec.training.grad_clip) if spec.training.grad_clip is not None else None,
        )


@dataclass(frozen=True)
class Remedy:
    """One spec change: the JSON to merge into the spec and why it addresses the measured cause."""

    change: str
    reason: str


def _change(section: str, values: dict[str, Any]) -> str:
    return f'"{section}": {json.dumps(values)}'


def _saturating(names: Iterable[str]) -> bool:
    for name in names:
        info = ACTIVATIONS.get(canonical_activation_name(name) or name)
        if info is not None and info.saturation is not None:
            return True
    return False


def remedies(causes: set[str], setup: TrainingSetup, *, activation_names: Sequence[str] = ()) -> list[Remedy]:
    """Spec changes the service can run next for the measured causes, most direct first, without repeats."""
    found: list[Remedy] = []

    def add(change: str, reason: str) -> None:
        if all(remedy.change != change for remedy in found):
            found.append(Remedy(change, reason))

    gradients = causes & {"vanishing", "saturated"}
    unstable = causes & {"exploding", "diverged"}
    if gradients and setup.init not in (None, "auto"):
        add(_change("training", {"init": "auto"}), "initialisation scaled for each activation's gain")
    if (gradients or unstable or "unexplained" in causes) and setup.norm in (None, "none") and setup.rnn_cell is None:
        add(_change("model", {"norm": "batch"}), "batch normalisation keeps each layer's inputs in range")
    if "vanishing" in causes and setup.model_kind in (None, "mlp") and not setup.residual:
        add(_change("model", {"residual": True}), "skip connections give the early layers a direct gradient path")
    if "vanishing" in causes and setup.rnn_cell == "rnn":
        add(_change("model", {"cell": "gru"}), "gated cells carry gradients across time steps")
    if unstable or "dead" in causes or "unexplained" in causes:
        lower = (setup.lr or 0.001) / LEARNING_RATE_DIVISOR
        add(_change("training", {"lr": float(f"{lower:.3g}")}), "a lower learning rate takes smaller, stabler steps")
    if unstable and setup.grad_clip is None:
        add(_change("training", {"grad_clip": PROPOSED_GRADIENT_CLIP}), "clipping bounds the size of each update")
    if "dead" in causes or (gradients and _saturating(activation_names)):
        add(
            f'"activations": {json.dumps(list(NON_SATURATING_REPLACEMENTS))}',
            "the leaky ReLU and ELU family neither saturates nor dies on the negative side",
        )
    return found
