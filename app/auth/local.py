"""The local admin key of the embedded mode, kept in a credentials file that only its owner can read.

``actlab serve`` on a loopback address calls ``ensure_local_key`` at start: the first time
(or when the stored key no longer works against this database) it creates an admin key,
writes it to the credentials file (mode 0600) under the service URL, and returns it for
printing. The CLI client calls ``read_local_key(url)`` to find the key for the URL it talks to.

File format: ``{"services": {"http://127.0.0.1:8000": {"key": "al_...", "created_at": "..."}}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from actlab.connection import is_loopback_host, read_saved_key, service_address
from app.auth import service
from app.config import Settings, get_settings
from app.models.types import utc_now

logger = logging.getLogger(__name__)

LOCAL_KEY_NAME = "local admin (actlab serve)"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable credentials file %s: %s", path, error)
        return {}
    return content if isinstance(content, dict) else {}


def read_local_key(url: str, *, path: Path | None = None) -> str | None:
    """The key stored for this service URL in the credentials file (default: the setting), or None."""
    return read_saved_key(url, path=path or get_settings().credentials_file)


def write_local_key(url: str, key: str, *, path: Path) -> None:
    """Store the key for this service URL, keeping other entries; the file is replaced atomically with mode 0600."""
    credentials = _read_file(path)
    services = credentials.get("services")
    if not isinstance(services, dict):
        services = {}
    services[service_address(url)] = {"key": key, "name": LOCAL_KEY_NAME, "created_at": utc_now().isoformat()}
    credentials["services"] = services
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 from the start (mkstemp), so the key is never readable by others, not even briefly.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(credentials, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def ensure_local_key(*, settings: Settings, session: Session, url: str) -> str | None:
    """Create and store a local admin key for a loopback service unless a working one is stored; the new key or None.

    None also when authentication is off or the URL is not a loopback address (keys for a
    shared service are handed out with ``actlab keys create``).
    """
    if not settings.auth_required:
        return None
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if not is_loopback_host(host):
        return None
    stored = read_local_key(url, path=settings.credentials_file)
    if stored is not None:
        principal = service.authenticate(session=session, key=stored)
        if principal is not None and principal.is_admin:
            return None
    created = service.create_api_key(session=session, name=LOCAL_KEY_NAME, is_admin=True)
    write_local_key(url, created.key, path=settings.credentials_file)
    return created.key
