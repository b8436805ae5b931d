"""SQL of the api_keys table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey


def add_api_key(*, session: Session, api_key: ApiKey) -> None:
    """Stage a new key; the caller commits."""
    session.add(api_key)
    session.flush()


def find_by_hash(*, session: Session, key_hash: str) -> ApiKey | None:
    """The key whose SHA-256 hash this is (revoked or not)."""
    return session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).first()


def list_api_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def find_by_id_or_prefix(*, session: Session, text: str) -> list[ApiKey]:
    """Keys whose id is ``text`` or whose prefix starts with it (several when a short prefix is ambiguous)."""
    try:
        key_id = uuid.UUID(text)
    except ValueError:
        key_id = None
    if key_id is not None:
        found = session.get(ApiKey, key_id)
        if found is not None:
            return [found]
    pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return list(session.scalars(select(ApiKey).where(ApiKey.prefix.like(pattern, escape="\\")).order_by(ApiKey.id)))


def mark_revoked(*, session: Session, api_key: ApiKey, now: datetime) -> None:
    """Record the revocation (kept, so listings show when a key stopped working)."""
    api_key.revoked_at = now
    session.flush()
