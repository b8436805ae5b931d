"""Metric tables as Parquet, streamed one row group per batch (memory stays flat).

The columns, their order and the rows are those of the JSON and CSV tables. Types come from the
database columns: identifiers and labels are strings, counts 64-bit integers, measurements 64-bit
floats (a value that was not finite stays NaN or infinity, as in CSV), activation_parameters is
JSON text (as in CSV), and a factorial experiment's factor columns are text (a level as in the
cell label's JSON: lists and blocks as compact JSON, numbers as their digits).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from app.metrics.repository import column_python_types

if TYPE_CHECKING:
    import pyarrow as pa

MEDIA_TYPE = "application/vnd.apache.parquet"


def _arrow_type(python_type: type[Any] | None) -> pa.DataType:
    import pyarrow as pa

    if python_type is int:
        return pa.int64()
    if python_type is float:
        return pa.float64()
    return pa.string()


def metric_schema(columns: Sequence[str], table: str) -> pa.Schema:
    """The Arrow schema of a metric table with these columns (factor columns, unknown to the database, as text)."""
    import pyarrow as pa

    types = column_python_types(table)
    return pa.schema([pa.field(name, _arrow_type(types.get(name))) for name in columns])


def text_value(value: Any) -> str | None:
    """A value of a text column: JSON text for what is not a string (lists, blocks, numbers), None stays null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, uuid.UUID):
        return str(value)
    return json.dumps(value)


class _Chunks:
    """A write-only file that hands out what was written since the last take()."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def parquet_chunks(schema: pa.Schema, batches: Iterable[pa.RecordBatch], *, rows_per_group: int) -> Iterator[bytes]:
    """A Parquet file of ``batches`` (in the schema), as bytes: one chunk per row group of ``rows_per_group``
    rows (the last may be shorter; the setting parquet_row_group_rows), each sent as soon as it is written,
    then the footer. At most one row group is held at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        held: list[pa.RecordBatch] = []
        count = 0
        for batch in batches:
            while batch.num_rows:
                take = min(batch.num_rows, rows_per_group - count)
                held.append(batch.slice(0, take))
                batch, count = batch.slice(take), count + take
                if count == rows_per_group:
                    writer.write_table(pa.Table.from_batches(held, schema=schema), row_group_size=rows_per_group)
                    held, count = [], 0
                    yield sink.take()
        if held:
            writer.write_table(pa.Table.from_batches(held, schema=schema), row_group_size=rows_per_group)
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()
