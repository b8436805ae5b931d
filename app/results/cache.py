"""The results cache: a finished experiment's result responses, computed once per (experiment, options).

The results of a finished experiment change only when something writes to it: new epoch rows, a run that
ends, new seeds, a retry, rows of an import. Each of those bumps the experiment's ``results_version`` in
the same transaction (app.experiments.repository.bump_results_version); a cached response is served only
while the version it was computed at is the experiment's own. The entries live in the database, so every
API process shares them and none serves bytes another has invalidated. Experiments still queued or running
are computed on every request (their numbers move with each epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.auth.service import owner_filter_for
from app.experiments.service import FINISHED_EXPERIMENT_STATUSES
from app.results import cache_repository

logger = logging.getLogger(__name__)

_FINISHED = frozenset(str(status) for status in FINISHED_EXPERIMENT_STATUSES)


def cache_key(endpoint: str, parameters: dict[str, Any]) -> str:
    """The key of one response: a hash of the endpoint and its normalised parameters (defaults filled in)."""
    text = json.dumps([endpoint, parameters], sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_response(
    *,
    session: Session,
    experiment_id: uuid.UUID,
    endpoint: str,
    parameters: dict[str, Any],
    compute: Callable[[], bytes],
    max_bytes: int,
) -> bytes:
    """The response bytes from the cache when they are current, else ``compute()`` (stored when finished).

    ``parameters`` must be the normalised options (every option with its value in force), so equal requests
    share an entry. The owner check is the one of every results endpoint: another owner's experiment is not
    found (``compute`` raises it). Responses over ``max_bytes`` are not stored (0 turns the cache off).
    """
    state = cache_repository.cache_state(session=session, experiment_id=experiment_id, owner_id=owner_filter_for(None))
    if state is None or state[0] not in _FINISHED or max_bytes <= 0:
        return compute()
    _status, version = state
    key = cache_key(endpoint, parameters)
    content = cache_repository.cached_content(
        session=session, experiment_id=experiment_id, cache_key=key, results_version=version
    )
    if content is not None:
        return content
    content = compute()
    if len(content) <= max_bytes:
        try:
            cache_repository.store_content(
                session=session, experiment_id=experiment_id, cache_key=key, results_version=version, content=content
            )
            cache_repository.delete_stale_entries(session=session, experiment_id=experiment_id, results_version=version)
            session.commit()
        except SQLAlchemyError as error:
            # A cache that cannot be written (a busy database) costs the next request a computation, not this one.
            session.rollback()
            logger.warning("results cache: not stored for experiment %s: %s", experiment_id, error)
    return content
