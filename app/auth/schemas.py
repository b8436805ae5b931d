"""Who makes a request, and the API views of keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import Field

from app.schemas import ResponseModel, UtcDateTime


@dataclass(frozen=True)
class Principal:
    """The caller: the API key that owns what it creates, and whether that key is an admin."""

    owner_id: uuid.UUID | None
    name: str
    is_admin: bool
    prefix: str | None = None

    def __post_init__(self) -> None:
        # A non-admin without an owner would match no owner filter; refuse it rather than show everything.
        if not self.is_admin and self.owner_id is None:
            raise ValueError("a principal that is not an admin must have an owner id")

    @property
    def owner_filter(self) -> uuid.UUID | None:
        """The owner id rows must carry to be visible to this caller, or None when every row is (admins)."""
        return None if self.is_admin else self.owner_id


# The caller when authentication is off (a developer on loopback, or tests that say so): it sees everything
# and what it submits has no owner.
LOCAL_ADMIN = Principal(owner_id=None, name="local (authentication off)", is_admin=True)


@dataclass(frozen=True)
class CreatedApiKey:
    """A new key: the secret (shown once, never stored) and the stored row's id and prefix."""

    key: str
    id: uuid.UUID
    name: str
    prefix: str
    is_admin: bool


class ApiKeyView(ResponseModel):
    """An API key as listings show it: never the key itself."""

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The first characters of the key, to tell keys apart.")
    is_admin: bool
    created_at: UtcDateTime
    revoked_at: UtcDateTime | None = None


class WhoAmI(ResponseModel):
    """The caller as the service sees it."""

    name: str = Field(description="The name the key was created with.")
    prefix: str | None = Field(description="The first characters of the key; null when authentication is off.")
    is_admin: bool = Field(description="Admins see and cancel every owner's experiments.")
    owner_id: uuid.UUID | None = Field(description="The owner id stored on the experiments this key submits.")
    auth_required: bool = Field(description="Whether the service requires an API key.")
