"""Pure ASGI middleware: a 405 response lists every method the path supports in its Allow header.

When several routes match a path (GET and POST /v1/experiments are two routes), the router
answers 405 from the first one and its Allow header names that route's methods only.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import routing
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def route_methods(routes: list[routing.BaseRoute]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every HTTP route, included routers flattened."""
    found = []
    for route in routing.iter_route_contexts(routes):
        pattern = getattr(route, "path_regex", None)
        methods = route.methods
        if isinstance(pattern, re.Pattern) and methods:
            found.append((pattern, frozenset(methods)))
    return found


class AllowedMethodsMiddleware:
    """Rewrite the Allow header of 405 responses to the union of the methods of every route matching the path."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], list[routing.BaseRoute]]) -> None:
        self.app = app
        self.routes = routes
        self._table: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    def allowed(self, path: str) -> list[str]:
        """The methods some route accepts on this path, sorted."""
        if self._table is None:
            # Built on first use: routers are all included by then.
            self._table = route_methods(self.routes())
        methods: set[str] = set()
        for pattern, route_methods_ in self._table:
            if pattern.match(path):
                methods |= route_methods_
        return sorted(methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def allow_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                allowed = self.allowed(str(scope.get("path", "")))
                if allowed:
                    headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"allow"]
                    headers.append((b"allow", ", ".join(allowed).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, allow_send)
