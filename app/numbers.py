"""Finite numbers: NaN and infinities (a diverged run's) become None before they are stored, encoded or shown."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None (None, NaN, infinities, booleans, pandas NA)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finite_tree(value: Any) -> Any:
    """A nested structure of dicts, lists and tuples with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_tree(item) for item in value]
    return value
