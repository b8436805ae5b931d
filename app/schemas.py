"""Response types shared by several domains: UTC timestamps, error bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to a naive timestamp (SQLite drops the zone); aware ones are converted to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


def _reject_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain the NUL character (\\u0000)")
    return value


# Text query parameters may not hold NUL: PostgreSQL refuses it in any string.
NoNulText = Annotated[str, AfterValidator(_reject_nul)]


class ResponseModel(BaseModel):
    """Output model: built from ORM objects or dicts."""

    model_config = ConfigDict(from_attributes=True)


class ErrorItem(BaseModel):
    """One problem with a request."""

    loc: str = Field(
        description="Where: the JSON path in the body (activations.0.name; empty for the body as a whole), "
        "or query.NAME, path.NAME, header.NAME."
    )
    msg: str = Field(description="What is wrong, with the allowed values where there is a fixed set.")
    type: str = Field(description="A machine-readable error kind.")


class ValidationErrorResponse(BaseModel):
    """The body of a 422 response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "loc": "activations.0.name",
                            "msg": "unknown activation 'relu2'; allowed: celu, custom, elu, ...",
                            "type": "unknown_activation",
                        }
                    ]
                }
            ]
        }
    )

    detail: list[ErrorItem]


class MessageResponse(BaseModel):
    """The body of any other error response (404, 409, 413, 503)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "experiment 3f2a... not found"}]})

    detail: str
