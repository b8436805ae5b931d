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
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_SECONDS = 30.0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# Error statuses that mean the request itself was wrong (exit status EXIT_BAD_INPUT, not EXIT_FAILED).
BAD_INPUT_STATUSES = frozenset({400, 404, 409, 413, 422})


class ClientError(Exception):
    """A problem to report to the user, with the exit status to end with."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILED, http_status: int | None = None) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.http_status = http_status


class ServiceUnreachableError(ClientError):
    """The service did not answer at all (connection refused, timeout, broken connection)."""


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


class ServiceClient:
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
            raise ClientError(
                "the service rejected the request:\n" + "\n".join(f"  {line}" for line in lines),
                exit_status=EXIT_BAD_INPUT,
                http_status=422,
            )
        if response.status_code >= 400:
            status = EXIT_BAD_INPUT if response.status_code in BAD_INPUT_STATUSES else EXIT_FAILED
            raise ClientError(
                f"HTTP {response.status_code}: " + "; ".join(detail_lines(response)),
                exit_status=status,
                http_status=response.status_code,
            )
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

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
