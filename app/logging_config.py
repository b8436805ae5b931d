"""Logging for the API and the workers: text for people, or one JSON object per line for log pipelines.

Every line carries the experiment and run ids in effect, taken from ``log_context`` (a
context variable, so they follow a request or a run through every module it calls) or
from ``extra={"experiment_id": ...}`` on the call. ``configure_logging(settings)`` installs
the format chosen by the setting ``log_format`` (json or text) on the root logger.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from app.config import Settings

CONTEXT_FIELDS = ("experiment_id", "run_id")

_log_context: ContextVar[dict[str, str]] = ContextVar("actlab_log_context", default={})  # noqa: B039

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextmanager
def log_context(**identifiers: object) -> Iterator[None]:
    """Add ids (experiment_id, run_id, ...) to every log line written inside the block; None values are skipped."""
    merged = {**_log_context.get(), **{name: str(value) for name, value in identifiers.items() if value is not None}}
    token = _log_context.set(merged)
    try:
        yield
    finally:
        _log_context.reset(token)


def current_log_context() -> dict[str, str]:
    """The ids in effect for log lines written now."""
    return dict(_log_context.get())


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_log_context.get())
    for name, value in vars(record).items():
        if name not in _RECORD_ATTRIBUTES and not name.startswith("_") and value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, the context ids and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _extra_fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` followed by the context ids in effect, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, with ``[experiment_id=... run_id=...]`` appended when there are any."""
        text = super().format(record)
        context = {name: value for name, value in _extra_fields(record).items() if name in CONTEXT_FIELDS}
        if context:
            text += " [" + " ".join(f"{name}={value}" for name, value in context.items()) + "]"
        return text


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for a log_format setting ('json' or 'text')."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log line to stderr (or ``stream``) in the configured format and level; safe to call again.

    Uvicorn's loggers are routed through the same handler, and its access log is quieted
    because the API's middleware logs each request itself (with route, status and duration).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_actlab_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    handler._actlab_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    return handler
