"""Encoding of result tables and images: JSON records, CSV and Parquet bytes, media types.

Nothing here computes: each function takes a finished table (a DataFrame) and turns it into what a
client receives. NaN and NA become null, timestamps ISO 8601 in UTC, nested values (dicts, lists) stay
nested in JSON and become JSON text in CSV and Parquet cells.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from app.results.plots import MEDIA_TYPES as IMAGE_MEDIA_TYPES
from app.schemas import as_utc
from app.service_errors import InvalidInputError

TableFormat = Literal["json", "csv", "parquet"]
TABLE_FORMATS: tuple[str, ...] = ("json", "csv", "parquet")
TABLE_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested values (dicts, lists) as JSON text, so CSV and Parquet cells stay scalar."""
    flat = frame.copy()
    for column in flat.columns:
        if flat[column].dtype == object and flat[column].map(lambda value: isinstance(value, dict | list)).any():
            flat[column] = flat[column].map(
                lambda value: json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
            )
    return flat


def json_ready(value: Any) -> Any:
    """A value JSON can hold: NaN and NA as None, timestamps in ISO 8601, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, datetime):
        # SQLite hands back naive timestamps; every stored time is UTC.
        moment = as_utc(value)
        return moment.isoformat() if moment is not None else None
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _column_values(column: pd.Series) -> list[Any]:
    """A column's values as json_ready makes them, converted a column at a time where its dtype allows.

    numpy floats, integers and booleans become Python numbers in one ``tolist`` (NaN and infinities then None),
    which is what json_ready makes of each; every other dtype (text, nullable integers, timestamps, objects)
    goes through json_ready value by value.
    """
    values = column.to_numpy() if isinstance(column.dtype, np.dtype) else None
    if values is not None and values.dtype.kind == "f":
        return [value if math.isfinite(value) else None for value in values.tolist()]
    if values is not None and values.dtype.kind in "iub":
        return list(values.tolist())
    return [json_ready(value) for value in column]


def table_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as JSON-ready records: NaN as null, timestamps in ISO 8601, nested values kept."""
    columns = list(frame.columns)
    # items() hands out each column without the per-position indexing of iloc (a few times cheaper).
    values = [_column_values(column) for _, column in frame.items()]
    if not columns:
        return [{} for _ in range(len(frame))]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


def encode_table(frame: pd.DataFrame, output_format: str) -> bytes:
    """The table as JSON (an array of objects), CSV (header row) or Parquet bytes."""
    if output_format == "json":
        return json.dumps(table_records(frame), allow_nan=False).encode()
    flat = _flat(frame)
    if output_format == "csv":
        return flat.to_csv(index=False).encode()
    if output_format == "parquet":
        buffer = io.BytesIO()
        flat.to_parquet(buffer, index=False, engine="pyarrow")
        return buffer.getvalue()
    raise InvalidInputError(
        [
            {
                "loc": "query.format",
                "msg": f"format must be one of {', '.join(TABLE_FORMATS)}; got {output_format!r}",
                "type": "enum",
            }
        ]
    )


def timestamps_utc(frame: pd.DataFrame) -> pd.DataFrame:
    """The table with every ``*_at`` column as timezone-aware UTC timestamps (SQLite stores them naive)."""
    converted = frame.copy()
    for column in converted.columns:
        if column.endswith("_at"):
            converted[column] = pd.to_datetime(converted[column].map(as_utc), utc=True)
    return converted


def image_media_type(image_format: str) -> str:
    """The Content-Type of an image format."""
    return IMAGE_MEDIA_TYPES[image_format]
