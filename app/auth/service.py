"""Rules of API keys: creation (the secret is shown once), hashing, authentication, revocation.

Keys are random (``secrets.token_urlsafe``) with the recognisable prefix ``al_``; only their
SHA-256 hash is stored. A plain hash is enough here, unlike passwords: a 256-bit random key
cannot be guessed from its hash, so a slow hash would only slow every request down.

The principal of the current request is also kept in a context variable, so that services
called from any router (``require_experiment``, ``list_experiments``) filter by owner even
when the router does not pass the caller along.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from sqlalchemy.orm import Session

from actlab.connection import is_loopback_host
from app.auth import repository
from app.auth.schemas import CreatedApiKey, Principal
from app.config import Settings
from app.models import ApiKey
from app.models.types import utc_now
from app.service_errors import ConflictError, InvalidInputError, NotFoundError

KEY_PREFIX = "al_"
# Characters of a key kept in clear to tell keys apart in listings: "al_" and 8 random ones.
SHOWN_PREFIX_LENGTH = 11
# Longer "keys" are not ours; refusing them early avoids hashing whatever a client sends.
MAX_KEY_LENGTH = 200
MAX_NAME_LENGTH = 200

_current_principal: ContextVar[Principal | None] = ContextVar("actlab_current_principal", default=None)


class AuthExposureError(RuntimeError):
    """The service was asked to run without authentication on an interface others can reach."""


def generate_key() -> str:
    """A new random API key: ``al_`` and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in place of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _clean_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or "\x00" in cleaned:
        raise InvalidInputError(
            [
                {
                    "loc": "name",
                    "msg": f"a key name must be 1 to {MAX_NAME_LENGTH} characters without NUL; got {name!r}",
                    "type": "value_error",
                }
            ]
        )
    return cleaned


def create_api_key(*, session: Session, name: str, is_admin: bool = False) -> CreatedApiKey:
    """Create and commit a key; the returned secret is the only copy there will ever be."""
    key = generate_key()
    row = ApiKey(
        id=uuid.uuid4(),
        name=_clean_name(name),
        key_hash=hash_key(key),
        prefix=key[:SHOWN_PREFIX_LENGTH],
        is_admin=is_admin,
        created_at=utc_now(),
    )
    repository.add_api_key(session=session, api_key=row)
    session.commit()
    return CreatedApiKey(key=key, id=row.id, name=row.name, prefix=row.prefix, is_admin=row.is_admin)


def list_api_keys(*, session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return repository.list_api_keys(session=session)


def revoke_api_key(*, session: Session, prefix_or_id: str) -> ApiKey:
    """Revoke the key with this id or prefix (already revoked: unchanged); NotFoundError or ConflictError if ambiguous."""
    text = prefix_or_id.strip()
    matches = repository.find_by_id_or_prefix(session=session, text=text) if text else []
    if not matches:
        raise NotFoundError(f"no API key has the id or prefix {prefix_or_id!r}; `actlab keys list` shows them")
    if len(matches) > 1:
        names = ", ".join(f"{key.prefix} ({key.name})" for key in matches)
        raise ConflictError(f"{prefix_or_id!r} matches {len(matches)} keys: {names}; give a longer prefix or the id")
    api_key = matches[0]
    if api_key.revoked_at is None:
        repository.mark_revoked(session=session, api_key=api_key, now=utc_now())
        session.commit()
    return api_key


def authenticate(*, session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key; None for anything else."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return None
    api_key = repository.find_by_hash(session=session, key_hash=hash_key(key))
    if api_key is None or api_key.revoked_at is not None:
        return None
    return Principal(owner_id=api_key.id, name=api_key.name, is_admin=api_key.is_admin, prefix=api_key.prefix)


def current_principal() -> Principal | None:
    """The caller of the request being served, or None outside a request (workers, the CLI)."""
    return _current_principal.get()


def owner_filter_for(viewer: Principal | None) -> uuid.UUID | None:
    """The owner id rows must carry for ``viewer`` (default: the current request's caller); None when all are visible."""
    caller = viewer if viewer is not None else current_principal()
    return caller.owner_filter if caller is not None else None


def set_current_principal(principal: Principal) -> Token[Principal | None]:
    """Make ``principal`` the caller for the rest of this context (the auth dependency does this)."""
    return _current_principal.set(principal)


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Run a block as ``principal`` (None: as no one, which sees everything)."""
    token = _current_principal.set(principal)
    try:
        yield
    finally:
        _current_principal.reset(token)


def check_auth_exposure(*, settings: Settings, host: str) -> None:
    """Refuse (AuthExposureError) to serve with authentication off on any interface but loopback."""
    if settings.auth_required or is_loopback_host(host):
        return
    raise AuthExposureError(
        f"refusing to listen on {host!r} with authentication off (ACTLAB_AUTH_REQUIRED=false): anyone who can "
        "reach that interface could read and cancel every experiment. Listen on 127.0.0.1, or turn "
        "authentication on and hand out keys with `actlab keys create --name NAME`."
    )
