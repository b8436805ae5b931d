"""Pure ASGI middleware: the request body size limit."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(Exception):
    """Raised from receive() once a streamed body passes the limit."""


def _payload_too_large_message(limit: int) -> bytes:
    return json.dumps({"detail": f"request body is larger than the limit of {limit} bytes"}).encode()


async def _send_payload_too_large(send: Send, limit: int) -> None:
    body = _payload_too_large_message(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
