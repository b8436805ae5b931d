"""Field-level validation messages shared by the API and the CLI.

Pydantic puts the tag of a tagged union into an error's location (``model.mlp.hidden``)
and the member type of a plain union (``params.alpha.float``); users never wrote those
parts, so they are removed by walking the location alongside the model's annotations.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

_MESSAGE_PREFIXES = ("Value error, ", "Assertion failed, ")


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _union_member(members: list[Any], tag: str) -> Any:
    """The member a pydantic union tag names: a discriminator value, a class name or a type name."""
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel):
            for field in member.model_fields.values():
                if typing.get_origin(field.annotation) is typing.Literal and tag in typing.get_args(field.annotation):
                    return member
            if member.__name__ == tag:
                return member
        elif getattr(member, "__name__", None) == tag:
            return member
    return None


def clean_location(location: tuple[int | str, ...], model: type[BaseModel] | None) -> list[int | str]:
    """The location without union tags, as the user wrote it (unknown shapes are kept verbatim)."""
    cleaned: list[int | str] = []
    current: Any = model
    for part in location:
        current = _unwrap(current)
        if _is_union(current):
            members = [member for member in typing.get_args(current) if member is not type(None)]
            if len(members) > 1 and isinstance(part, str):
                # Pydantic inserted a tag naming the member it tried; drop it and follow that member.
                current = _union_member(members, part)
                continue
            current = _unwrap(members[0]) if members else None
        cleaned.append(part)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
        elif typing.get_origin(current) in (list, tuple, set, frozenset) and isinstance(part, int):
            arguments = typing.get_args(current)
            current = arguments[0] if arguments else None
        elif typing.get_origin(current) is dict:
            arguments = typing.get_args(current)
            current = arguments[1] if len(arguments) == 2 else None
        else:
            current = None
    return cleaned


def _message(text: str) -> str:
    for prefix in _MESSAGE_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def validation_error_details(error: ValidationError, *, model: type[BaseModel] | None = None) -> list[dict[str, str]]:
    """One {"loc", "msg", "type"} per problem; loc is a dotted path such as 'activations.0.name' ('' for the whole)."""
    if model is None:
        from app.spec import ExperimentSpec

        if error.title == ExperimentSpec.__name__:
            model = ExperimentSpec
    details: dict[str, dict[str, str]] = {}
    for item in error.errors(include_url=False):
        raw_location = tuple(item["loc"])
        cleaned = clean_location(raw_location, model)
        location = ".".join(str(part) for part in cleaned)
        message = _message(item["msg"])
        # Members of one union fail together at one place: one entry, their messages joined.
        key = location if len(cleaned) < len(raw_location) else f"{location}\0{message}"
        if key in details:
            if message not in details[key]["msg"].split("; "):
                details[key]["msg"] += f"; {message}"
            continue
        details[key] = {"loc": location, "msg": message, "type": item["type"]}
    return list(details.values())


def format_validation_errors(error: ValidationError, *, model: type[BaseModel] | None = None) -> list[str]:
    """Each problem as one line 'path.to.field: message'."""
    return [
        f"{detail['loc']}: {detail['msg']}" if detail["loc"] else detail["msg"]
        for detail in validation_error_details(error, model=model)
    ]
