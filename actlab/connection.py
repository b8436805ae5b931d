"""Where the service is and which key to send: the one rule the ``actlab`` CLI and ``actlab.Client`` share.

- URL: the one given, else ``$ACTLAB_URL``, else ``DEFAULT_URL`` (the local ``actlab serve``).
- Key: the one given, else ``$ACTLAB_API_KEY``, else the key ``actlab serve`` saved for that URL in the
  credentials file (``$ACTLAB_CREDENTIALS_FILE``, the setting ``credentials_file``; by default
  ``$XDG_CONFIG_HOME/actlab/credentials.json``, ``~/.config`` without XDG_CONFIG_HOME).

The file maps service addresses to keys: ``{"services": {"http://127.0.0.1:8000": {"key": "al_..."}}}``;
``service_address`` is how a URL becomes that address (app/auth/local.py writes the file with it).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from actlab.http import DEFAULT_URL

CREDENTIALS_FILE_VARIABLE = "ACTLAB_CREDENTIALS_FILE"


def default_credentials_file() -> Path:
    """The CLI's credentials file: $XDG_CONFIG_HOME/actlab/credentials.json (default ~/.config)."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "actlab" / "credentials.json"


def credentials_file() -> Path:
    """The credentials file in force: $ACTLAB_CREDENTIALS_FILE, else the default."""
    configured = os.environ.get(CREDENTIALS_FILE_VARIABLE)
    return Path(configured).expanduser() if configured else default_credentials_file()


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also in [brackets]); names other than localhost are not resolved."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def service_address(url: str) -> str:
    """The URL reduced to scheme://host:port, with every loopback name spelled 127.0.0.1."""
    parts = urlsplit(url.strip() if "://" in url else f"http://{url.strip()}")
    scheme = (parts.scheme or "http").lower()
    host = (parts.hostname or "127.0.0.1").lower()
    if is_loopback_host(host):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host}:{port}"


def read_saved_key(url: str, *, path: Path | None = None) -> str | None:
    """The key `actlab serve` saved for this service URL (in ``path``, default the file in force), or None."""
    try:
        content = json.loads((path or credentials_file()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    services = content.get("services") if isinstance(content, dict) else None
    entry = services.get(service_address(url)) if isinstance(services, dict) else None
    key = entry.get("key") if isinstance(entry, dict) else None
    return key if isinstance(key, str) and key else None


def resolve_url(url: str | None) -> str:
    """The service URL: ``url``, else $ACTLAB_URL, else the local default; without a trailing slash."""
    return str(url or os.environ.get("ACTLAB_URL") or DEFAULT_URL).rstrip("/")


def resolve_api_key(
    api_key: str | None, url: str, *, saved_key: Callable[[str], str | None] = read_saved_key
) -> str | None:
    """The bearer key: ``api_key``, else $ACTLAB_API_KEY, else ``saved_key(url)`` (None: send none)."""
    return api_key or os.environ.get("ACTLAB_API_KEY") or saved_key(url)
