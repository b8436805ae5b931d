"""Encode row iterators as streamed CSV or JSON, a batch at a time, so memory stays flat."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

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


def _csv_value(value: Any) -> Any:
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
        writer.writerows([_csv_value(value) for value in row] for row in batch)
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
