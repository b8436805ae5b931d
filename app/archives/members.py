"""Reading an archive's members: the zip, spec.json and experiment.json, its CSV tables and their cells.

Every failure is an InvalidInputError whose location names the file (and the column or row) as
``archive.FILE...``, so a 422 tells the user where the archive is wrong.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from app.config import SpecLimits
from app.errors import validation_error_details
from app.service_errors import InvalidInputError
from app.spec import ExperimentSpec

ARCHIVE_FORMAT_VERSION = 1
ARCHIVE_MEMBERS: tuple[str, ...] = ("spec.json", "runs.csv", "metrics.csv", "layer_metrics.csv", "results.csv")
# The methods GET .../export writes (deflate) and the plain one; zipfile's others (bzip2, lzma) are refused.
ARCHIVE_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# How deep JSON in a member or a cell may nest: an export nests a few levels; a deeper one only recurses.
ARCHIVE_MAX_JSON_DEPTH = 32
# The integer columns are INTEGER on PostgreSQL (4 bytes), so a whole number must fit in int32 there and here.
ARCHIVE_INTEGER_RANGE = (-(2**31), 2**31 - 1)


def archive_error(location: str, message: str) -> InvalidInputError:
    """A 422 at ``archive.LOCATION``."""
    return InvalidInputError([{"loc": f"archive.{location}", "msg": message, "type": "invalid_archive"}])


def read_members(content: bytes, *, max_uncompressed_bytes: int) -> dict[str, bytes]:
    """The members an import reads (spec.json, experiment.json and robustness.csv if present, the metric CSVs)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise archive_error("zip", "the upload is not a zip archive; send the file GET .../export produced") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        missing = [name for name in ("spec.json", "runs.csv", "metrics.csv", "layer_metrics.csv") if name not in infos]
        if missing:
            raise archive_error(
                "zip", f"the archive lacks {', '.join(missing)}; it must hold {', '.join(ARCHIVE_MEMBERS)}"
            )
        if sum(info.file_size for info in infos.values()) > max_uncompressed_bytes:
            raise archive_error(
                "zip",
                f"the archive expands beyond {max_uncompressed_bytes} bytes (setting ACTLAB_MAX_IMPORT_UNCOMPRESSED_BYTES)",
            )
        wanted = ("spec.json", "experiment.json", "runs.csv", "metrics.csv", "layer_metrics.csv", "robustness.csv")
        return {name: _read_member(archive, infos[name]) for name in wanted if name in infos}


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One member's bytes; an encrypted, oddly compressed or damaged member is a 422 naming it."""
    if info.flag_bits & 0x1:
        raise archive_error(info.filename, "the member is encrypted; export archives are not, send one unencrypted")
    if info.compress_type not in ARCHIVE_COMPRESSIONS:
        raise archive_error(
            info.filename,
            f"compression method {info.compress_type} is not supported; "
            f"use {' or '.join(f'{number} ({name})' for number, name in ARCHIVE_COMPRESSIONS.items())}",
        )
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as error:
        raise archive_error(info.filename, f"the member is damaged and cannot be decompressed: {error}") from None


def load_json(content: bytes | str, where: str) -> Any:
    """JSON text as a value, nesting at most ARCHIVE_MAX_JSON_DEPTH levels; anything else is a 422 at WHERE."""
    try:
        loaded = json.loads(content)
    except RecursionError:
        raise archive_error(where, f"JSON nests deeper than {ARCHIVE_MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise archive_error(where, f"not valid JSON: {error}") from None
    pending: list[tuple[Any, int]] = [(loaded, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > ARCHIVE_MAX_JSON_DEPTH:
            raise archive_error(where, f"JSON nests deeper than {ARCHIVE_MAX_JSON_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return loaded


def read_csv(name: str, content: bytes, required: tuple[str, ...], *, max_rows: int) -> pd.DataFrame:
    """One CSV member as a table of at most MAX_ROWS rows (more is a 422; parsing stops there); an empty
    member is a table with the required columns."""
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype={"run_id": str}, keep_default_na=True, nrows=max_rows + 1)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(required))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise archive_error(name, f"not readable as CSV: {error}") from None
    if len(frame) > max_rows:
        raise archive_error(name, f"holds more than the {max_rows} rows this archive's spec and the limits allow")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise archive_error(name, f"missing columns {', '.join(missing)}")
    return frame


def parse_spec(content: bytes, limits: SpecLimits) -> tuple[Any, ExperimentSpec]:
    """spec.json as sent and as an ExperimentSpec validated against the limits in force."""
    payload = load_json(content, "spec.json")
    try:
        spec = ExperimentSpec.model_validate(payload, context={"limits": limits})
    except ValidationError as error:
        details = validation_error_details(error, model=ExperimentSpec)
        raise InvalidInputError(
            [
                {"loc": f"archive.spec.json.{detail['loc']}".rstrip("."), "msg": detail["msg"], "type": detail["type"]}
                for detail in details
            ]
        ) from None
    return payload, spec


def read_metadata(members: dict[str, bytes]) -> dict[str, Any]:
    """experiment.json as a dict; an archive without it gives an empty one."""
    if "experiment.json" not in members:
        return {}
    loaded = load_json(members["experiment.json"], "experiment.json")
    if not isinstance(loaded, dict):
        raise archive_error("experiment.json", "must hold a JSON object")
    return loaded


def optional(value: Any) -> Any:
    """A cell as a Python value: empty (None, NaN, NA) as None, numpy scalars as Python numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def optional_number(value: Any, where: str) -> float | None:
    """A cell holding a number or nothing."""
    value = optional(value)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise archive_error(where, f"{value!r} is not a number") from None


def optional_integer(value: Any, where: str) -> int | None:
    """A cell holding a whole number an integer column can hold, or nothing."""
    number = optional_number(value, where)
    if number is None:
        return None
    if not number.is_integer():
        raise archive_error(where, f"{value!r} is not a whole number")
    low, high = ARCHIVE_INTEGER_RANGE
    if not low <= number <= high:
        raise archive_error(where, f"{value!r} lies outside the integer range {low} to {high}")
    return int(number)


def optional_text(value: Any, where: str) -> str | None:
    """A field holding text or nothing (a number or an object there is a 422)."""
    value = optional(value)
    if value is None or isinstance(value, str):
        return value
    raise archive_error(where, f"{value!r} must be text or empty")


def optional_datetime(value: Any, where: str) -> datetime | None:
    """A cell holding a timestamp (naive ones are UTC) or nothing."""
    value = optional(value)
    if value is None or value == "":
        return None
    try:
        moment = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise archive_error(where, f"{value!r} is not a timestamp") from None
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    result: datetime = moment.to_pydatetime()
    return result


def optional_json(value: Any, where: str) -> Any:
    """A cell holding JSON text or nothing."""
    value = optional(value)
    if value is None or value == "":
        return None
    return load_json(value, where) if isinstance(value, str) else value


def numeric(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Turn these columns into numbers in place (a missing column becomes NaN); a non-number is a 422."""
    for column in columns:
        if column not in frame.columns:
            frame[column] = np.nan
            continue
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise archive_error(f"{name}.{column}", f"row {row + 1}: {frame[column].iloc[row]!r} is not a number")
        frame[column] = converted


def integers(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Turn these columns into numbers in place; each value must be a whole number."""
    numeric(frame, columns, name)
    for column in columns:
        values = frame[column]
        numbers = values.to_numpy(dtype=float)
        if values.isna().any() or not np.all(np.equal(np.mod(numbers, 1), 0)):
            raise archive_error(f"{name}.{column}", "every value must be a whole number")
        low, high = ARCHIVE_INTEGER_RANGE
        outside = (numbers < low) | (numbers > high)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise archive_error(
                f"{name}.{column}",
                f"row {row + 1}: {values.iloc[row]!r} lies outside the integer range {low} to {high}",
            )
