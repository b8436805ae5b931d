"""The gradient-flow rules, one home for the engine and the results (plain Python, no torch).

A gradient-norm ratio compares where the gradient arrives with where it starts: over depth the first
layer's norm over the last layer's, over time (a recurrent layer of our own, BPTT) the norm of
dL/dh_1 over that of dL/dh_T. One rule flags both: ``vanishing`` below ``VANISHING_RATIO``,
``exploding`` above ``EXPLODING_RATIO`` (the catalog's thresholds, served in ``GET /v1/catalog``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from app.catalog import EXPLODING_RATIO, VANISHING_RATIO

GradientFlag = Literal["vanishing", "exploding"]
GRADIENT_FLAGS: tuple[GradientFlag, ...] = ("vanishing", "exploding")


def gradient_flag(ratio: float | None) -> GradientFlag | None:
    """'vanishing' or 'exploding' when a first/last gradient-norm ratio crosses the catalog thresholds."""
    if ratio is None or not math.isfinite(ratio):
        return None
    if ratio < VANISHING_RATIO:
        return "vanishing"
    if ratio > EXPLODING_RATIO:
        return "exploding"
    return None


def gradient_norm_ratio(norms: Sequence[float | None]) -> float | None:
    """First over last norm (layers over depth, steps over time); None when either is missing, zero or not finite."""
    if len(norms) < 2:
        return None
    first, last = norms[0], norms[-1]
    if first is None or last is None or last == 0:
        return None
    ratio = first / last
    return ratio if math.isfinite(ratio) else None


def log_slope_back_in_time(norms: Sequence[float | None]) -> float | None:
    """Least-squares slope of ln(norm) per step back in time (from the last step to the first).

    Negative where the gradient shrinks as it flows back (vanishing), positive where it grows
    (exploding); ``exp(slope)`` is the mean factor per step. Steps without a positive finite norm are
    left out; None with fewer than two left.
    """
    points = [
        (float(len(norms) - 1 - step), math.log(norm))
        for step, norm in enumerate(norms)
        if norm is not None and math.isfinite(norm) and norm > 0
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return slope if math.isfinite(slope) else None
