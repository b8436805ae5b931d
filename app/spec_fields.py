"""Field types and checks that every model of the experiment spec shares (``app.spec``).

The limits a validation runs under, the strict input model, numbers that are never booleans, and the
check of one catalog parameter value (activation and dataset parameters).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from app.catalog import ParameterInfo, ParameterValue
from app.config import SpecLimits, get_settings


def limits_in_force(info: ValidationInfo | None = None) -> SpecLimits:
    """The limits a validation runs under: those passed in its context (a stored spec), else the settings."""
    if info is not None and isinstance(info.context, dict) and isinstance(info.context.get("limits"), SpecLimits):
        return info.context["limits"]
    return get_settings()


class StrictModel(BaseModel):
    """Input model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


def not_boolean(value: Any) -> Any:
    # JSON true is not 1: pydantic's lax mode would train "seeds": [true] as seed 1.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not a boolean (got {str(value).lower()})")
    return value


Integer = Annotated[int, BeforeValidator(not_boolean)]
"""The spec's integer type: every integer field of an input model uses it (a guard test checks)."""
Number = Annotated[float, BeforeValidator(not_boolean)]
"""The spec's real-number type: every float field of an input model uses it."""


def check_parameter(info: ParameterInfo, value: Any, where: str) -> ParameterValue:
    """Validate one catalog parameter value; raise ValueError naming the problem."""
    if info.kind == "choice":
        if not isinstance(value, str) or value not in info.choices:
            raise ValueError(f"{where} must be one of {', '.join(repr(c) for c in info.choices)}, got {value!r}")
        return value
    if info.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if info.kind == "int" and (not float(value).is_integer()):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {value!r}")
    if info.minimum is not None:
        if info.exclusive_minimum and number <= info.minimum:
            raise ValueError(f"{where} must be greater than {info.minimum:g}, got {value!r}")
        if not info.exclusive_minimum and number < info.minimum:
            raise ValueError(f"{where} must be at least {info.minimum:g}, got {value!r}")
    if info.maximum is not None and number > info.maximum:
        raise ValueError(f"{where} must be at most {info.maximum:g}, got {value!r}")
    return int(number) if info.kind == "int" else number


def format_value(value: ParameterValue) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# The bound comes before the boolean check so that the JSON schema says "minimum" (as for plain fields).
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(not_boolean)]
Seed = Annotated[int, Field(ge=0), BeforeValidator(not_boolean)]
