"""Long responses: row iterators encoded as streamed CSV or JSON a batch at a time (memory stays flat), and
the admission limits that keep streams from exhausting the database pool.

A stream (a metric download, an event stream) is admitted by a StreamLimit before its response
starts: when the limit is reached the request is answered 503 with Retry-After at once, instead of
waiting for a connection and failing half-way through a 200 (a truncated body). An admitted stream
holds its permit, and at most one database connection, until AdmittedStreamingResponse ends, which
is also when the client went away.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.schemas import MessageResponse
from app.service_errors import UnavailableError

# Rows are encoded this many at a time: one chunk per batch keeps the number of writes small.
ROWS_PER_CHUNK = 1000


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinity; a diverged run's loss becomes null.
        return None
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def csv_value(value: Any) -> Any:
    """A value as the csv module should write it: floats as repr (round-trips exactly), JSON as sorted JSON text."""
    if value is None:
        return ""
    if isinstance(value, float):
        # repr round-trips exactly; pandas reads 'nan' and 'inf' back as floats.
        return repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _batches(rows: Iterable[Sequence[Any]], size: int) -> Iterator[list[Sequence[Any]]]:
    batch: list[Sequence[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def csv_chunks(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, rows_per_chunk: int = ROWS_PER_CHUNK
) -> Iterator[str]:
    """A header line, then the rows as CSV text, one chunk per batch of rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    yield buffer.getvalue()
    for batch in _batches(rows, rows_per_chunk):
        buffer.seek(0)
        buffer.truncate()
        writer.writerows([csv_value(value) for value in row] for row in batch)
        yield buffer.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID | datetime):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_objects(objects: list[dict[str, Any]]) -> str:
    try:
        # Fast path: one encoder call per batch; it refuses NaN and infinity instead of writing invalid JSON.
        return json.dumps(objects, allow_nan=False, default=_json_default)
    except ValueError:
        return json.dumps([_json_value(item) for item in objects], allow_nan=False, default=_json_default)


def json_array_chunks(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, rows_per_chunk: int = ROWS_PER_CHUNK
) -> Iterator[str]:
    """A JSON array of objects keyed by ``columns``, written incrementally, one chunk per batch of rows."""
    yield "["
    first = True
    for batch in _batches(rows, rows_per_chunk):
        encoded = _encode_objects([dict(zip(columns, row, strict=True)) for row in batch])
        # Drop the batch's own brackets: the chunks join into one array.
        yield ("" if first else ",\n") + encoded[1:-1]
        first = False
    yield "]\n"


class StreamPermit:
    """One admitted stream's place under its limit; release() gives it back (once, however often it is called)."""

    def __init__(self, limit: StreamLimit) -> None:
        self._limit = limit
        self._released = False

    def release(self) -> None:
        """Give the place back."""
        if not self._released:
            self._released = True
            self._limit._release()


class StreamLimit:
    """At most ``limit`` streams of one kind at once; admit() never waits (503 with Retry-After when full).

    Thread-safe: permits are taken in the thread pool (sync endpoints) and given back on the event loop.
    """

    def __init__(self, *, what: str, limit: int, setting: str, retry_after_seconds: int) -> None:
        self.what = what
        self.limit = limit
        self.setting = setting
        self.retry_after_seconds = retry_after_seconds
        self._lock = threading.Lock()
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Streams admitted and not yet ended."""
        return self._in_use

    def admit(self) -> StreamPermit:
        """A permit, or UnavailableError (503, Retry-After) when ``limit`` streams already run."""
        with self._lock:
            if self._in_use >= self.limit:
                raise UnavailableError(
                    f"{self.limit} {self.what} are already running, the most this server streams at once "
                    f"(setting {self.setting}); retry in {self.retry_after_seconds} s",
                    headers={"Retry-After": str(self.retry_after_seconds)},
                )
            self._in_use += 1
        return StreamPermit(self)

    def _release(self) -> None:
        with self._lock:
            self._in_use -= 1


def stream_refused_response(setting: str) -> dict[str, Any]:
    """The OpenAPI entry of a stream's 503: over its limit (``setting``) or no database connection came free."""
    return {
        "model": MessageResponse,
        "description": f"Too many at once (setting {setting}) or the database is busy; nothing was sent. "
        "Retry after the Retry-After header's seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    }


@dataclass(frozen=True)
class StreamLimits:
    """The stream limits of one API process (app.state.stream_limits), built from its settings."""

    downloads: StreamLimit
    events: StreamLimit
    # Event streams poll the database in the thread pool through this limiter, so that many streams
    # polling at once take at most this many connections; the others wait on the event loop.
    event_polls: anyio.CapacityLimiter
    # ACTLAB_EVENT_POLL_SECONDS and ACTLAB_EVENT_HEARTBEAT_SECONDS of every event stream.
    event_poll_seconds: float
    event_heartbeat_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        """Limits as configured: max_streaming_downloads, max_event_streams, event_poll_concurrency, event_poll_seconds."""
        retry_after = settings.stream_retry_after_seconds
        return cls(
            downloads=StreamLimit(
                what="metric downloads",
                limit=settings.download_limit,
                setting="ACTLAB_MAX_STREAMING_DOWNLOADS",
                retry_after_seconds=retry_after,
            ),
            events=StreamLimit(
                what="event streams",
                limit=settings.max_event_streams,
                setting="ACTLAB_MAX_EVENT_STREAMS",
                retry_after_seconds=retry_after,
            ),
            event_polls=anyio.CapacityLimiter(settings.event_poll_limit),
            event_poll_seconds=settings.event_poll_seconds,
            event_heartbeat_seconds=settings.event_heartbeat_seconds,
        )


class ClosingStream:
    """An iterator of chunks with a close() that frees what the chunks are read from, even if never iterated."""

    def __init__(self, chunks: Iterator[str] | Iterator[bytes], *, close: Callable[[], None]) -> None:
        self._chunks: Iterator[str | bytes] = chunks
        self._close: Callable[[], None] | None = close

    def __iter__(self) -> Iterator[str | bytes]:
        return self

    def __next__(self) -> str | bytes:
        return next(self._chunks)

    def close(self) -> None:
        """End the chunks (a generator's with-blocks exit: a PostgreSQL COPY is cancelled and drained, so its
        connection is idle again), then free the source (a database session); harmless when repeated."""
        close, self._close = self._close, None
        if close is None:
            return
        try:
            end = getattr(self._chunks, "close", None)
            if end is not None:
                end()
        finally:
            close()


class AdmittedStreamingResponse(StreamingResponse):
    """A streaming response that gives its permit back, and closes its content, however the stream ends.

    Whether the body was sent in full, the client went away (disconnect, reset) or the content
    raised, the permit is released and ``content.close()`` runs once the response is done.
    """

    def __init__(self, content: ClosingStream | AsyncIterable[str], *, permit: StreamPermit, **options: Any) -> None:
        super().__init__(content, **options)
        self.content = content
        self.permit = permit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                if isinstance(self.content, ClosingStream):
                    # In the thread pool: closing a database session may wait on the network.
                    await run_in_threadpool(self.content.close)
                elif isinstance(self.content, AsyncGenerator):
                    await self.content.aclose()
            finally:
                self.permit.release()
