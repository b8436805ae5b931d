"""Field types and checks that every model of the experiment spec shares (``app.spec``).

The limits a validation runs under, the strict input model, numbers that are never booleans, the
check of one catalog parameter value (activation and dataset parameters), and the fields that exist
in spec version 2 only (``version_2_field``, ``VersionedModel``, ``version_2_fields_set``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    model_serializer,
)
from pydantic.fields import FieldInfo

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


VERSION_2_MARK = "x-spec-version"
"""The JSON-schema key that marks a field of spec version 2 only (value 2); GET /v1/catalog lists the fields."""


def version_2_field(default: Any, *, description: str, **constraints: Any) -> Any:
    """A field that exists in spec version 2 only: a version-1 spec naming it is a 422, and a spec that does not
    give it dumps without it (``VersionedModel``), so that a spec without it dumps, hashes and trains exactly as before."""
    return Field(
        default,
        description=f"Version 2 only. {description}",
        json_schema_extra={VERSION_2_MARK: 2},
        **constraints,
    )


def is_version_2(info: FieldInfo) -> bool:
    """Whether a model field was declared with ``version_2_field``."""
    extra = info.json_schema_extra
    return isinstance(extra, dict) and extra.get(VERSION_2_MARK) == 2


class VersionedModel(BaseModel):
    """Input model with version-2 fields: unknown fields are errors, and a version-2 field the input did not give is
    not dumped (the canonical JSON and spec hash of a version-1 spec stay what they were)."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _without_unset_version_2_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = handler(self)
        if not isinstance(dumped, dict):
            return dumped
        for name, info in type(self).model_fields.items():
            if is_version_2(info) and name in dumped and name not in self.model_fields_set:
                del dumped[name]
        for name in self._omitted_fields():
            dumped.pop(name, None)
        return dumped

    def _omitted_fields(self) -> tuple[str, ...]:
        """Fields left out of the dump beside the unset version-2 ones (none unless a block says so)."""
        return ()


def version_2_fields_set(model: BaseModel, location: tuple[int | str, ...] = ()) -> list[tuple[int | str, ...]]:
    """Where a validated spec names version-2 fields (given in the input), nested models included.

    Each place is a validation location: a discriminated union's tag is in it (``("model", "rnn",
    "bidirectional")``), as pydantic writes it and ``app.errors`` reads it; drop the tags for display.
    """
    found: list[tuple[int | str, ...]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if is_version_2(info) and name in model.model_fields_set:
            found.append((*location, name))
        if isinstance(value, BaseModel):
            tag = getattr(value, info.discriminator, None) if isinstance(info.discriminator, str) else None
            found += version_2_fields_set(value, (*location, name, *([tag] if isinstance(tag, str) else [])))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += version_2_fields_set(item, (*location, name, index))
    return found


def without_unset(dumped: Any, *names: str) -> Any:
    """A model's dump without the named version-2 fields where they are None, so older specs dump (and hash) as before."""
    if not isinstance(dumped, dict):
        return dumped
    return {key: value for key, value in dumped.items() if key not in names or value is not None}


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
