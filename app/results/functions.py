"""Learned activation shapes against their starting shapes, for the learned-functions plot (no torch).

Covers every catalog activation that can learn (``ActivationInfo.can_learn``). The closed forms and
how the engine's stored values (``activation_parameters``) map to a unit's coefficients live in
``app.activation_shapes``; this module picks what the plot draws: the starting shape (for PAU, the
leaky ReLU its rational function is fitted to, the honest reference) and the learned function per layer
(input-conditioned units at the probe-set means of their generated coefficients).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from app import activation_shapes
from app.activation_shapes import evaluate_expression, leaky_relu, pade
from app.catalog import ACTIVATIONS
from app.spec import ActivationSpec

__all__ = ["evaluate_expression", "learned_shape", "pade", "starting_shape"]


def _draws(activation: ActivationSpec) -> bool:
    # Custom formulas are drawn only with learnable scalars; fixed activations never.
    if activation.canonical_name == "custom":
        return bool(activation.learnable and activation.expression)
    return ACTIVATIONS[activation.canonical_name].can_learn


def starting_shape(activation: ActivationSpec, x: np.ndarray) -> np.ndarray | None:
    """The function a learnable activation starts as, or None for a fixed activation."""
    if not _draws(activation):
        return None
    if activation.canonical_name == "pau":
        # The unit is initialised to approximate this leaky ReLU; the target is the honest reference shape.
        return leaky_relu(x, float(activation.resolved_params()["negative_slope"]))
    return activation_shapes.curves(activation, x)[0]


def learned_shape(activation: ActivationSpec, parameters: Mapping[str, float], x: np.ndarray) -> np.ndarray | None:
    """The function with learned parameter values (as stored by the engine), or None when they are missing."""
    if not _draws(activation):
        return None
    coefficients = activation_shapes.stored_coefficients(activation, parameters)
    return None if coefficients is None else activation_shapes.curves(activation, x, coefficients)[0]
