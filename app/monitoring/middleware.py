"""Pure ASGI middleware: count and time every request, and log one line per request."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging_config import log_context
from app.monitoring.service import ServiceMetrics

access_logger = logging.getLogger("app.access")

# Probes and scrapes arrive every few seconds; logging them at INFO would drown the requests that matter.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Requests that matched no route are labelled alike, so random paths cannot grow the metric's label set.
UNMATCHED_ROUTE = "unmatched"


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def _identifiers(scope: Scope) -> dict[str, str]:
    parameters: dict[str, Any] = scope.get("path_params") or {}
    return {name: str(parameters[name]) for name in ("experiment_id", "run_id") if name in parameters}


class RequestMetricsMiddleware:
    """Record each request's method, route template, status and latency, and write an access log line.

    The latency is the time until the response starts, so long streams (metric tables,
    server-sent events) do not read as slow requests; the log line also has the total time.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        first_byte_seconds: float | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status, first_byte_seconds
            if message["type"] == "http.response.start":
                status = int(message["status"])
                first_byte_seconds = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            total_seconds = time.perf_counter() - started
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.observe_request(
                method=method,
                route=route,
                status=status,
                seconds=first_byte_seconds if first_byte_seconds is not None else total_seconds,
            )
            self._log(scope, method=method, route=route, status=status, seconds=total_seconds)

    @staticmethod
    def _log(scope: Scope, *, method: str, route: str, status: int, seconds: float) -> None:
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        path = str(scope.get("path", ""))
        principal = (scope.get("state") or {}).get("principal")
        fields: dict[str, Any] = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
        }
        if principal is not None:
            fields["api_key"] = principal.prefix or principal.name
        with log_context(**_identifiers(scope)):
            access_logger.log(level, "%s %s %d %.1f ms", method, path, status, seconds * 1000, extra=fields)
