"""The errors of the Activation Lab client: one ``ClientError`` family, a subclass per kind of refusal.

``ServiceClient.request`` (actlab/http.py) raises them from the status the server answered, each with the
server's own message: ``SpecError`` (422, ``.errors`` the server's list of ``{loc, msg}``), ``NotFound``
(404), ``Conflict`` (409), ``QuotaExceeded`` (429, ``.retry_after`` seconds from the Retry-After header),
``AuthError`` (401, 403). The CLI prints the message and ends with ``exit_status``.
"""

from __future__ import annotations

from typing import Any

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class ClientError(Exception):
    """A problem to report to the user, with the exit status to end with."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILED, http_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.http_status = http_status


class ServiceUnreachableError(ClientError):
    """The service did not answer at all (connection refused, timeout, broken connection)."""


class SpecError(ClientError):
    """422: the server rejected the request; ``errors`` holds its field-level problems ({loc, msg}) as sent."""

    def __init__(self, message: str, *, errors: list[dict[str, Any]], **options: Any) -> None:
        super().__init__(message, **options)
        self.errors = errors


class NotFound(ClientError):
    """404: no such experiment (or other resource) for this key."""


class Conflict(ClientError):
    """409: the request conflicts with the stored state (an Idempotency-Key reused with another spec, ...)."""


class AuthError(ClientError):
    """401 or 403: the key is missing, unknown, revoked, or not allowed to do this."""


class QuotaExceeded(ClientError):
    """429: a per-owner quota is used up; ``retry_after`` is the server's Retry-After in seconds (None if absent)."""

    def __init__(self, message: str, *, retry_after: float | None, **options: Any) -> None:
        super().__init__(message, **options)
        self.retry_after = retry_after


# The error class raised for each HTTP status (422 and 429 carry more and are built apart).
ERRORS_BY_STATUS: dict[int, type[ClientError]] = {401: AuthError, 403: AuthError, 404: NotFound, 409: Conflict}
