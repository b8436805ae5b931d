"""Reading an archive's members: the zip, spec.json and experiment.json, its CSV tables and their cells.

Every failure is an InvalidInputError whose location names the file (and the column or row) as
``archive.FILE...``, so a 422 tells the user where the archive is wrong.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
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
# Uncompressed size an archive may expand to: guards the server against zip bombs.
ARCHIVE_MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024


def archive_error(location: str, message: str) -> InvalidInputError:
    """A 422 at ``archive.LOCATION``."""
    return InvalidInputError([{"loc": f"archive.{location}", "msg": message, "type": "invalid_archive"}])


def read_members(content: bytes) -> dict[str, bytes]:
    """The members an import reads (spec.json, experiment.json if present, the three metric CSVs)."""
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
        if sum(info.file_size for info in infos.values()) > ARCHIVE_MAX_UNCOMPRESSED_BYTES:
            raise archive_error("zip", f"the archive expands beyond {ARCHIVE_MAX_UNCOMPRESSED_BYTES} bytes")
        wanted = ("spec.json", "experiment.json", "runs.csv", "metrics.csv", "layer_metrics.csv")
        try:
            return {name: archive.read(name) for name in wanted if name in infos}
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise archive_error("zip", f"the archive is damaged: {error}") from None


def read_csv(name: str, content: bytes, required: tuple[str, ...]) -> pd.DataFrame:
    """One CSV member as a table; an empty member is a table with the required columns."""
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype={"run_id": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(required))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise archive_error(name, f"not readable as CSV: {error}") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise archive_error(name, f"missing columns {', '.join(missing)}")
    return frame


def parse_spec(content: bytes, limits: SpecLimits) -> tuple[Any, ExperimentSpec]:
    """spec.json as sent and as an ExperimentSpec validated against the limits in force."""
    try:
        payload = json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise archive_error("spec.json", f"not valid JSON: {error}") from None
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
    try:
        loaded = json.loads(members["experiment.json"])
    except (ValueError, UnicodeDecodeError) as error:
        raise archive_error("experiment.json", f"not valid JSON: {error}") from None
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


def optional_integer(value: Any, where: str) -> int | None:
    """A cell holding a whole number or nothing."""
    value = optional(value)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise archive_error(where, f"{value!r} is not a whole number") from None
    if not number.is_integer():
        raise archive_error(where, f"{value!r} is not a whole number")
    return int(number)


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
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise archive_error(where, f"{value!r} is not JSON") from None


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
        if values.isna().any() or not np.all(np.equal(np.mod(values.to_numpy(dtype=float), 1), 0)):
            raise archive_error(f"{name}.{column}", "every value must be a whole number")
