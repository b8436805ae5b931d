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

# Rows per Parquet row group: larger groups compress and read better; each is encoded and sent on its own.
ROWS_PER_GROUP = 50_000

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


def _text(value: Any) -> str | None:
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


def parquet_chunks(
    schema: pa.Schema, rows: Iterable[Sequence[Any]], *, rows_per_group: int = ROWS_PER_GROUP
) -> Iterator[bytes]:
    """A Parquet file of ``rows`` (tuples in the schema's column order), as bytes, one chunk per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text_columns = [index for index, field in enumerate(schema) if pa.types.is_string(field.type)]
    sink = _Chunks()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        batch: list[Sequence[Any]] = []
        iterator = iter(rows)
        while True:
            batch.clear()
            for row in iterator:
                batch.append(row)
                if len(batch) >= rows_per_group:
                    break
            if not batch:
                break
            values = [list(column) for column in zip(*batch, strict=True)]
            for index in text_columns:
                values[index] = [_text(value) for value in values[index]]
            writer.write_table(pa.Table.from_arrays(values, schema=schema))
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()
