"""``actlab keys create|list|revoke``: manage the API keys of the configured database.

Run it where the service's DATABASE_URL is set (an operator's shell, or the API container).
A new key is printed once, alone on standard output, so ``KEY=$(actlab keys create --name ci)``
captures it; only its SHA-256 hash is stored, so it cannot be shown again.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the keys subcommand with create, list and revoke."""
    keys_parser = subparsers.add_parser(
        "keys",
        help="create, list and revoke API keys (on the database of DATABASE_URL)",
        description="Manage the API keys that clients send as `Authorization: Bearer <key>`.",
    )
    actions = keys_parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create_parser = actions.add_parser("create", help="create a key and print it once")
    create_parser.add_argument("--name", required=True, help="who or what the key is for (shown in listings)")
    create_parser.add_argument(
        "--admin", action="store_true", help="an admin key sees and cancels every owner's experiments"
    )
    create_parser.set_defaults(handler=create_key)

    list_parser = actions.add_parser("list", help="list keys: name, prefix, admin, created, revoked (never the key)")
    list_parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    list_parser.set_defaults(handler=list_keys)

    revoke_parser = actions.add_parser("revoke", help="revoke a key: it gets 401 from then on")
    revoke_parser.add_argument("key", metavar="PREFIX_OR_ID", help="the key's prefix (al_...) or id, from `list`")
    revoke_parser.set_defaults(handler=revoke_key)


def _database_problem(error: Exception) -> int:
    print(
        f"error: the database did not answer ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "check DATABASE_URL and run `actlab migrate` first",
        file=sys.stderr,
    )
    return 1


def _session() -> Any:
    from app.config import get_settings
    from app.db import make_engine, session_factory

    return session_factory(make_engine(get_settings().database_url))()


def create_key(arguments: argparse.Namespace) -> int:
    """Create a key and print the secret once on stdout (details on stderr)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.auth import service
    from app.service_errors import ServiceError

    with _session() as session:
        try:
            created = service.create_api_key(session=session, name=arguments.name, is_admin=arguments.admin)
        except ServiceError as error:
            print(f"error: {error.detail}", file=sys.stderr)
            return 2
        except SQLAlchemyError as error:
            return _database_problem(error)
    role = "admin key" if created.is_admin else "key"
    print(created.key)
    print(
        f"created {role} {created.prefix}... for {created.name!r} (id {created.id}); "
        "store it now: it is not kept and cannot be shown again",
        file=sys.stderr,
    )
    return 0


def list_keys(arguments: argparse.Namespace) -> int:
    """Print every key's name, prefix, role, creation and revocation time."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.auth import service
    from app.auth.schemas import ApiKeyView

    with _session() as session:
        try:
            views = [ApiKeyView.model_validate(row) for row in service.list_api_keys(session=session)]
        except SQLAlchemyError as error:
            return _database_problem(error)
    if arguments.json:
        print(json.dumps([view.model_dump(mode="json") for view in views], indent=2))
        return 0
    if not views:
        print("no API keys yet; create one with `actlab keys create --name NAME`", file=sys.stderr)
        return 0
    header = ("PREFIX", "NAME", "ADMIN", "CREATED", "REVOKED", "ID")
    rows = [
        (
            view.prefix,
            view.name,
            "yes" if view.is_admin else "no",
            view.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            view.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if view.revoked_at else "-",
            str(view.id),
        )
        for view in views
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def revoke_key(arguments: argparse.Namespace) -> int:
    """Revoke the key with the given prefix or id."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.auth import service
    from app.service_errors import ServiceError

    with _session() as session:
        try:
            revoked = service.revoke_api_key(session=session, prefix_or_id=arguments.key)
        except ServiceError as error:
            print(f"error: {error.detail}", file=sys.stderr)
            return 2
        except SQLAlchemyError as error:
            return _database_problem(error)
        print(f"revoked {revoked.prefix}... ({revoked.name}, id {revoked.id})")
    return 0
