"""CSV and Parquet of a metric table, encoded a column batch at a time with Arrow, or the database's own CSV.

SQLite (and Parquet on both databases): the rows come from ``repository.driver_row_batches`` (each run's own
columns, as the driver returns them) and the runs' columns from ``repository.export_runs``, written once per
run. Each batch of rows becomes Arrow columns; CSV text is assembled from them by Arrow's compute functions,
so no value goes through Python's ``repr`` or the csv module, and a batch is encoded and sent before the next
is read (memory stays flat however many rows there are). This CSV text is the one ``app.streaming.csv_chunks``
writes for the same rows, byte for byte: floats as ``repr`` writes them (shortest text that reads back to the
same float: ``1.0``, ``0.001``, ``1e-05``, ``nan``, ``inf``), text quoted only where the csv module quotes it,
empty cells for missing values.

CSV on PostgreSQL: ``repository.copied_csv_blocks``, the server's ``COPY ... TO STDOUT`` passed through in
PostgreSQL's layout (``copied_csv_chunks``; the same values, README "Export").
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from app.metrics import parquet
from app.metrics.repository import ExportRun, column_python_types, row_columns
from app.streaming import csv_value

if TYPE_CHECKING:
    import pyarrow as pa

RowBatches: TypeAlias = "Iterable[tuple[int, pa.RecordBatch]]"


def float_text(values: pa.Array) -> pa.Array:
    """Each float of a float64 array as ``repr`` writes it (null stays null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow writes the same shortest digits as repr; only the layout differs, in three ways, fixed here.
    text = pc.cast(values, pa.string())
    magnitude = pc.abs(values)
    # 1. The exponent has at least two digits in repr (1e-07, Arrow 1e-7).
    exponent = pc.fill_null(pc.match_substring(text, "e"), False)
    if pc.any(exponent).as_py():
        padded = pc.replace_substring_regex(pc.filter(text, exponent), r"e([+-])(\d)$", r"e\10\2")
        text = pc.replace_with_mask(text, exponent, padded)
    # 2. A whole number written without an exponent ends in .0 in repr (1.0, -0.0; Arrow 1, -0).
    whole = pc.fill_null(pc.and_(pc.equal(pc.floor(values), values), pc.less(magnitude, 1e10)), False)
    if pc.any(whole).as_py():
        text = pc.replace_with_mask(text, whole, pc.binary_join_element_wise(pc.filter(text, whole), ".0", ""))
    # 3. Where one writes an exponent and the other does not (repr: below 1e-4 and from 1e16; Arrow: below
    # 1e-6 and from 1e10): repr itself, once per distinct value (a learning rate column repeats one value).
    zone = pc.or_(
        pc.and_(pc.greater_equal(magnitude, 1e10), pc.less(magnitude, 1e16)),
        pc.and_(pc.greater_equal(magnitude, 1e-6), pc.less(magnitude, 1e-4)),
    )
    zone = pc.fill_null(zone, False)
    if pc.any(zone).as_py():
        odd = pc.filter(values, zone)
        distinct = pc.unique(odd)
        written = pa.array([repr(value) for value in distinct.to_pylist()], pa.string())
        text = pc.replace_with_mask(text, zone, pc.take(written, pc.index_in(odd, distinct)))
    return text


def _csv_fields(values: Sequence[Any]) -> str:
    """Values as the fields of a CSV row (without the line end), exactly as csv_chunks writes them."""
    buffer = io.StringIO()
    # A trailing empty field keeps the csv module's special case for a lone empty field ("") away.
    csv.writer(buffer, lineterminator="\n").writerow([*(csv_value(value) for value in values), ""])
    return buffer.getvalue()[:-2]


def _text_column(values: pa.Array) -> pa.Array:
    """A text column as CSV fields: each distinct value quoted by the csv module (labels repeat a lot)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = values.dictionary_encode()
    fields = pa.array([_csv_fields([value]) for value in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(fields, encoded.indices)


def row_schema(table: str) -> pa.Schema:
    """The Arrow schema of a table's own row columns (``repository.row_columns``), as in the Parquet file."""
    return parquet.metric_schema(row_columns(table), table)


def _row_arrays(batch: pa.RecordBatch, json_columns: list[int]) -> list[pa.Array]:
    """The batch's columns, JSON ones (the database's JSON text) rewritten as sorted JSON text, as csv_value does."""
    import pyarrow as pa

    arrays = list(batch.columns)
    for index in json_columns:
        texts = arrays[index].to_pylist()
        arrays[index] = pa.array(
            [None if text is None else _sorted_json(json.loads(text)) for text in texts], pa.string()
        )
    return arrays


def _sorted_json(value: Any) -> str | None:
    # A stored JSON null (JSON "null" text) is a missing value, as the ORM reads it.
    return None if value is None else str(csv_value(value))


def _json_columns(table: str) -> list[int]:
    types = column_python_types(table)
    # JSON columns have python_type dict (or none): everything that is not a number or text.
    return [index for index, name in enumerate(row_columns(table)) if types[name] not in (int, float, str)]


def _gather(pieces: RowBatches, batch_rows: int) -> Iterator[tuple[pa.Array, pa.RecordBatch]]:
    """Pieces of rows (of one run each) joined into batches of about ``batch_rows`` rows, with each row's run."""
    import numpy as np
    import pyarrow as pa

    positions: list[int] = []
    held: list[pa.RecordBatch] = []
    count = 0
    for position, piece in pieces:
        positions.append(position)
        held.append(piece)
        count += piece.num_rows
        if count >= batch_rows:
            lengths = [batch.num_rows for batch in held]
            yield pa.array(np.repeat(positions, lengths), pa.int32()), pa.concat_batches(held)
            positions, held, count = [], [], 0
    if held:
        lengths = [batch.num_rows for batch in held]
        yield pa.array(np.repeat(positions, lengths), pa.int32()), pa.concat_batches(held)


def _buffer_bytes(lines: pa.Array) -> bytes:
    """The concatenated values of a string array, as bytes, without copying them one by one."""
    import numpy as np

    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1 + lines.offset)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    data = lines.buffers()[2]
    return b"" if data is None else data.slice(start, end - start).to_pybytes()


def csv_chunks(
    *, columns: Sequence[str], table: str, runs: Sequence[ExportRun], pieces: RowBatches, batch_rows: int
) -> Iterator[bytes]:
    """The header line, then one chunk of CSV lines per batch of about ``batch_rows`` rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    yield (_csv_fields(columns) + "\n").encode()
    json_columns = _json_columns(table)
    prefixes = pa.array([_csv_fields([run.id, run.activation, run.seed, run.cell]) for run in runs], pa.string())
    has_factors = bool(runs) and bool(runs[0].factor_values)
    suffixes = pa.array([_csv_fields(run.factor_values) for run in runs], pa.string())
    for where, batch in _gather(pieces, batch_rows):
        arrays = _row_arrays(batch, json_columns)
        floats = [array for array in arrays if pa.types.is_floating(array.type)]
        # All float columns in one call: the kernels run over one long array instead of a short one per column.
        texts = float_text(pa.concat_arrays(floats)) if floats else pa.array([], pa.string())
        parts, written = [pc.take(prefixes, where)], 0
        for array in arrays:
            if pa.types.is_floating(array.type):
                parts.append(texts.slice(written, len(array)))
                written += len(array)
            elif pa.types.is_integer(array.type):
                parts.append(pc.cast(array, pa.string()))
            else:
                parts.append(_text_column(array))
        if has_factors:
            parts.append(pc.take(suffixes, where))
        lines = pc.binary_join_element_wise(*parts, ",", null_handling="replace", null_replacement="")
        yield _buffer_bytes(pc.binary_join_element_wise(lines, "", "\n"))


def copied_csv_chunks(*, columns: Sequence[str], blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The header line (as ``csv_chunks`` writes it), then the database's own CSV blocks as they come."""
    yield (_csv_fields(columns) + "\n").encode()
    yield from blocks


def parquet_chunks(
    *,
    columns: Sequence[str],
    table: str,
    runs: Sequence[ExportRun],
    pieces: RowBatches,
    batch_rows: int,
    rows_per_group: int,
) -> Iterator[bytes]:
    """A Parquet file of the table (``parquet.metric_schema``), one chunk per row group of ``rows_per_group``
    rows."""
    import pyarrow as pa

    schema = parquet.metric_schema(columns, table)
    json_columns = _json_columns(table)
    own_columns = len(row_columns(table))
    run_arrays = [
        pa.array([str(run.id) for run in runs], pa.string()),
        pa.array([run.activation for run in runs], pa.string()),
        pa.array([run.seed for run in runs], pa.int64()),
        pa.array([run.cell for run in runs], pa.string()),
    ]
    factor_arrays = [
        pa.array([parquet.text_value(run.factor_values[index]) for run in runs], pa.string())
        for index in range(len(columns) - len(run_arrays) - own_columns)
    ]

    def batches() -> Iterator[pa.RecordBatch]:
        for where, batch in _gather(pieces, min(batch_rows, rows_per_group)):
            arrays = [array.take(where) for array in run_arrays]
            arrays += _row_arrays(batch, json_columns)
            arrays += [array.take(where) for array in factor_arrays]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return parquet.parquet_chunks(schema, batches(), rows_per_group=rows_per_group)
