"""HTTP plumbing of the Activation Lab client: one ``ServiceClient`` per service, errors as ``ClientError``.

Every request of the ``actlab`` commands goes through ``ServiceClient.request``: connection problems
become ``ServiceUnreachableError`` (with how to start the service), error statuses become
``ClientError`` with the server's detail (one line per field for a 422) and the exit status a
command-line program ends with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from actlab.errors import (
    ERRORS_BY_STATUS,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ClientError,
    QuotaExceeded,
    ServiceUnreachableError,
    SpecError,
)

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_SECONDS = 30.0
# Error statuses that mean the request itself was wrong (exit status EXIT_BAD_INPUT, not EXIT_FAILED).
BAD_INPUT_STATUSES = frozenset({400, 404, 409, 413, 422})


def detail_lines(response: httpx.Response) -> list[str]:
    """The server's error detail as lines: one per field for a 422."""
    try:
        body = response.json()
    except ValueError:
        return [response.text.strip() or response.reason_phrase]
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, dict):
                location = item.get("loc", "")
                if isinstance(location, list):
                    location = ".".join(str(part) for part in location)
                lines.append(f"{location or '(body)'}: {item.get('msg', item)}")
            else:
                lines.append(str(item))
        return lines
    return [str(detail)]


def detail_items(response: httpx.Response) -> list[dict[str, Any]]:
    """The server's field-level problems of a 422 as it sent them ({loc, msg, ...}); one item for a plain detail."""
    try:
        body = response.json()
    except ValueError:
        return [{"loc": [], "msg": response.text.strip() or response.reason_phrase}]
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        return [item if isinstance(item, dict) else {"loc": [], "msg": str(item)} for item in detail]
    return [{"loc": [], "msg": str(detail)}]


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the delay form; an HTTP date or nothing gives None)."""
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Closing:
    """Use as a context manager: ``close()`` at the end of the block."""

    def close(self) -> None:
        """Release what the object holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ServiceClient(Closing):
    """A connection to one Activation Lab service: its address, the bearer key, and errors as ``ClientError``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    @property
    def base_url(self) -> httpx.URL:
        """The service address every path is relative to."""
        return self._http.base_url

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """Send a request; turn connection problems and error statuses into ClientError."""
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as error:
            raise ServiceUnreachableError(
                f"cannot reach the service at {self.base_url} ({type(error).__name__}: {error}); "
                "is it running? Start it with `actlab serve`, or pass --url"
            ) from error
        if response.status_code == 422:
            lines = detail_lines(response)
            raise SpecError(
                "the service rejected the request:\n" + "\n".join(f"  {line}" for line in lines),
                errors=detail_items(response),
                exit_status=EXIT_BAD_INPUT,
                http_status=422,
            )
        if response.status_code >= 400:
            status = EXIT_BAD_INPUT if response.status_code in BAD_INPUT_STATUSES else EXIT_FAILED
            message = f"HTTP {response.status_code}: " + "; ".join(detail_lines(response))
            if response.status_code == 429:
                raise QuotaExceeded(
                    message, retry_after=retry_after(response), exit_status=status, http_status=response.status_code
                )
            error_class = ERRORS_BY_STATUS.get(response.status_code, ClientError)
            raise error_class(message, exit_status=status, http_status=response.status_code)
        return response

    def get_json(self, path: str, **options: Any) -> Any:
        """GET ``path`` and decode its JSON body (errors as for ``request``)."""
        return self.request("GET", path, **options).json()

    @contextmanager
    def stream(self, method: str, path: str, **options: Any) -> Iterator[httpx.Response]:
        """The raw streamed response, whatever its status: the caller judges it (transport errors propagate)."""
        with self._http.stream(method, path, **options) as response:
            yield response

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
