"""Errors that services raise for the HTTP layer to translate (see app.main's handlers)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service refuses, with a message for the user."""

    status_code = 400

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class UnauthorizedError(ServiceError):
    """No API key, or one that is unknown or revoked; answered with a WWW-Authenticate challenge."""

    status_code = 401


class TooManyRequestsError(ServiceError):
    """The caller is over one of its quotas; the Retry-After header says when to try again."""

    status_code = 429


class NotFoundError(ServiceError):
    """The experiment or run does not exist (or is not visible to the caller)."""

    status_code = 404


class ConflictError(ServiceError):
    """The request contradicts the current state (an Idempotency-Key reused with another spec)."""

    status_code = 409


class UnavailableError(ServiceError):
    """A dependency (database, broker) could not be reached; the request may be retried."""

    status_code = 503


class InvalidInputError(ServiceError):
    """Input that failed validation; ``errors`` holds one {loc, msg, type} item per problem."""

    status_code = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{error['loc']}: {error['msg']}" for error in errors))
        self.errors = errors


def invalid_query_parameter(name: str, message: str, *, error_type: str = "value_error") -> InvalidInputError:
    """A 422 error for one query parameter."""
    return InvalidInputError([{"loc": f"query.{name}", "msg": message, "type": error_type}])
