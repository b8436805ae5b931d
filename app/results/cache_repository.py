"""SQL of the results cache: an experiment's cache state, and reading and writing its entries."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import upsert
from app.models import Experiment, ResultCacheEntry
from app.models.types import utc_now


def cache_state(*, session: Session, experiment_id: uuid.UUID, owner_id: uuid.UUID | None) -> tuple[str, int] | None:
    """The experiment's status and results_version (only if ``owner_id`` owns it, when given); None if not found."""
    statement = select(Experiment.status, Experiment.results_version).where(Experiment.id == experiment_id)
    if owner_id is not None:
        statement = statement.where(Experiment.owner_id == owner_id)
    found = session.execute(statement).first()
    return (str(found[0]), int(found[1])) if found is not None else None


def cached_content(*, session: Session, experiment_id: uuid.UUID, cache_key: str, results_version: int) -> bytes | None:
    """The entry's bytes when it was computed at ``results_version``, else None."""
    return session.scalar(
        select(ResultCacheEntry.content).where(
            ResultCacheEntry.experiment_id == experiment_id,
            ResultCacheEntry.cache_key == cache_key,
            ResultCacheEntry.results_version == results_version,
        )
    )


def store_content(
    *, session: Session, experiment_id: uuid.UUID, cache_key: str, results_version: int, content: bytes
) -> None:
    """Stage the entry (replacing an older one of the same key); the caller commits."""
    row = {
        "experiment_id": experiment_id,
        "cache_key": cache_key,
        "results_version": results_version,
        "content": content,
        "created_at": utc_now(),
    }
    upsert(session, ResultCacheEntry.__table__, [row], ("experiment_id", "cache_key"))  # type: ignore[arg-type]


def delete_stale_entries(*, session: Session, experiment_id: uuid.UUID, results_version: int) -> None:
    """Stage deleting the experiment's entries computed at an older version (they are never served again)."""
    session.execute(
        delete(ResultCacheEntry).where(
            ResultCacheEntry.experiment_id == experiment_id, ResultCacheEntry.results_version < results_version
        )
    )
