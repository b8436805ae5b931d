"""Pure ASGI middleware: the request body size limit, and the checks that refuse cross-site state changes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Methods that change state; a browser lets any page send them cross-site without asking (forms, no-cors fetch).
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_MEDIA_TYPE = "application/json"


class BodyTooLargeError(Exception):
    """Raised from receive() once a streamed body passes the limit."""


def _payload_too_large_message(limit: int) -> bytes:
    return json.dumps({"detail": f"request body is larger than the limit of {limit} bytes"}).encode()


async def _send_json_error(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_payload_too_large(send: Send, limit: int) -> None:
    await _send_json_error(send, 413, _payload_too_large_message(limit))


class BodySizeLimitMiddleware:
    """Answer 413 to bodies over ``max_body_bytes``: by Content-Length up front, or by counting a chunked body.

    Counting happens in ``receive`` so the application never holds more than the limit; once
    the limit is passed, whatever the application answers is replaced by the 413 response.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Archive uploads are legitimately far larger than a spec, so they get a limit of their own.
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_body_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await _send_payload_too_large(send, limit)
                    return

        received = 0
        exceeded = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLargeError(f"request body passed {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not exceeded:
                await send(message)
                return
            # The application turned the aborted read into some error response of its own; answer 413 instead.
            if not replaced and message["type"] == "http.response.start":
                replaced = True
                await _send_payload_too_large(send, limit)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLargeError:
            if not replaced:
                replaced = True
                await _send_payload_too_large(send, limit)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return _header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() not in ("", "0"))


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether an Origin header names this service (the host and port the request was sent to)."""
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


class CrossSiteRequestMiddleware:
    """Refuse POST, PUT, PATCH and DELETE that a page of another site could make a browser send.

    A cross-site form can send only the bodies ``text/plain``, ``application/x-www-form-urlencoded`` and
    ``multipart/form-data``, without an ``Authorization: Bearer`` header (app.dependencies accepts Basic
    credentials, which a browser replays, only on GET and HEAD). Here, before the application runs:

    - a body must have a Content-Type the path accepts (``application/json``, or ``body_types[path]``),
      else 415 naming the allowed types; a bodyless request (cancel) may omit Content-Type, but one it sends
      (a form always does) must be allowed too;
    - a request a browser marks with another ``Origin`` than the service's host gets 403 (this also covers
      a bodyless ``fetch`` with ``mode: "no-cors"`` when authentication is off).
    """

    def __init__(self, app: ASGIApp, *, body_types: Mapping[str, Iterable[str]] | None = None) -> None:
        self.app = app
        self.body_types = {path: tuple(types) for path, types in (body_types or {}).items()}

    def allowed_types(self, path: str) -> tuple[str, ...]:
        """The media types a state-changing request to ``path`` may send its body as."""
        return self.body_types.get(path, (JSON_MEDIA_TYPE,))

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request must be refused, else None."""
        method = str(scope.get("method", "GET")).upper()
        if method not in STATE_CHANGING_METHODS:
            return None
        path = str(scope.get("path", ""))
        origin = _header(scope, b"origin")
        if origin is not None and not _same_origin(origin, _header(scope, b"host")):
            return 403, (
                f"cross-site request refused: {method} from Origin {origin!r}; "
                "state-changing requests are accepted only from this service's own origin or from programs"
            )
        allowed = self.allowed_types(path)
        content_type = _header(scope, b"content-type")
        if content_type is None and not _has_body(scope):
            return None
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type in allowed:
            return None
        given = f"Content-Type {media_type!r}" if media_type else "a body without a Content-Type"
        return 415, f"{given} is not accepted on {method} {path}; send {' or '.join(allowed)}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        await _send_json_error(send, status, json.dumps({"detail": message}).encode())
