"""What the commands that talk to a service share: where it is (``--url``, ``--api-key``, the environment,
the key ``actlab serve`` stored), the client built from that, and the experiment id they are given.
"""

from __future__ import annotations

import argparse
import uuid

import httpx

from actlab.client import Client
from actlab.connection import read_saved_key, resolve_api_key, resolve_url
from actlab.errors import EXIT_BAD_INPUT, ClientError
from actlab.http import DEFAULT_URL, ServiceClient


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --url and --api-key to a subcommand."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"service address (default: $ACTLAB_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer key (default: $ACTLAB_API_KEY, else the key `actlab serve` saved for this URL)",
    )


def service_url(arguments: argparse.Namespace) -> str:
    """The service URL: --url, else $ACTLAB_URL, else the local default."""
    return resolve_url(arguments.url)


def stored_key(url: str) -> str | None:
    """The key `actlab serve` stored for this URL in the credentials file, if any."""
    return read_saved_key(url)


def make_client(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> ServiceClient:
    """A client of the service, with the bearer key when one is configured (--api-key, $ACTLAB_API_KEY, stored)."""
    url = service_url(arguments)
    # The rule of actlab.connection.resolve_api_key, through stored_key so tests can keep the user's file out.
    api_key = resolve_api_key(arguments.api_key, url, saved_key=stored_key)
    return ServiceClient(url, api_key=api_key, transport=transport)


def make_library_client(arguments: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> Client:
    """The ``actlab.Client`` of the same service and key as ``make_client`` (for the commands built on it)."""
    url = service_url(arguments)
    api_key = resolve_api_key(arguments.api_key, url, saved_key=stored_key)
    return Client(url, api_key=api_key, transport=transport)


def parse_experiment_id(text: str) -> str:
    """The experiment id in its canonical form; ClientError (bad input) when ``text`` is not a UUID."""
    try:
        return str(uuid.UUID(text))
    except ValueError as error:
        raise ClientError(f"{text!r} is not an experiment id (a UUID)", exit_status=EXIT_BAD_INPUT) from error
