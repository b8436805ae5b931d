"""Rules of the results domain: load an experiment's tables, compute results, encode them, export and import archives.

Every table leaves the service with trace columns (experiment id and name, spec hash, experiment
status and timestamps) in front, and the run ids and seeds it was computed from, so any row can be
traced back to its runs.
"""

from __future__ import annotations

import io
import json
import math
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.config import SpecLimits
from app.errors import validation_error_details
from app.experiments import service as experiments_service
from app.models import Experiment, Run, RunStatus
from app.models.epoch_metric import EPOCH_NUMBER_FIELDS
from app.models.layer_metric import LAYER_NUMBER_FIELDS
from app.models.status import FINISHED_RUN_STATUSES
from app.models.types import utc_now
from app.results import repository
from app.results.diagnostics import (
    RecommendationInputs,
    learned_parameters_by_layer,
    recommend,
    summarise_diagnostics,
    tied_best,
)
from app.results.plots import MEDIA_TYPES as IMAGE_MEDIA_TYPES
from app.results.plots import PlotData, plot
from app.results.statistics import (
    ResultOptions,
    StatisticsError,
    compare_pairs,
    run_summaries,
    summarise_activations,
)
from app.schemas import as_utc
from app.service_errors import InvalidInputError
from app.spec import ActivationSpec, ExperimentSpec, load_stored_spec

TableFormat = Literal["json", "csv", "parquet"]
TABLE_FORMATS: tuple[str, ...] = ("json", "csv", "parquet")
TABLE_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
TRACE_COLUMNS: tuple[str, ...] = (
    "experiment_id",
    "experiment_name",
    "spec_hash",
    "experiment_status",
    "experiment_created_at",
    "experiment_finished_at",
)
ARCHIVE_FORMAT_VERSION = 1
ARCHIVE_MEMBERS: tuple[str, ...] = ("spec.json", "runs.csv", "metrics.csv", "layer_metrics.csv", "results.csv")
# Uncompressed size an archive may expand to: guards the server against zip bombs.
ARCHIVE_MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
# Layers a model may report: hidden layers, conv blocks' linear layers, the output layer.
ARCHIVE_MAX_LAYERS_PER_EPOCH = 256


@dataclass
class ExperimentTables:
    """An experiment and its runs, epoch metrics and layer metrics as DataFrames."""

    experiment: Experiment
    spec: ExperimentSpec | None
    runs: pd.DataFrame
    metrics: pd.DataFrame
    layers: pd.DataFrame

    @property
    def activations(self) -> dict[str, ActivationSpec]:
        """The spec's activations by label."""
        if self.spec is None:
            return {}
        return {activation.display_label: activation for activation in self.spec.activations}

    @property
    def classes(self) -> int | None:
        """Number of classes of the dataset (chance accuracy is 1 / classes)."""
        return self.spec.dataset.classes if self.spec is not None else None


def stored_spec(experiment: Experiment) -> ExperimentSpec | None:
    """The experiment's canonical spec as a model, or None when it no longer parses."""
    try:
        return load_stored_spec(experiment.spec)
    except ValidationError:
        return None


def load_tables(*, session: Session, experiment_id: uuid.UUID) -> ExperimentTables:
    """Everything the results read for one experiment; NotFoundError when it does not exist."""
    experiment = experiments_service.require_experiment(session=session, experiment_id=experiment_id)
    return ExperimentTables(
        experiment=experiment,
        spec=stored_spec(experiment),
        runs=repository.runs_frame(session=session, experiment_id=experiment_id),
        metrics=repository.epoch_metrics_frame(session=session, experiment_id=experiment_id),
        layers=repository.layer_metrics_frame(session=session, experiment_id=experiment_id),
    )


def result_options(**values: Any) -> ResultOptions:
    """ResultOptions from query parameters; a bad value is a 422 naming the parameter."""
    try:
        return ResultOptions(**values)
    except StatisticsError as error:
        raise InvalidInputError(
            [{"loc": f"query.{error.field or 'options'}", "msg": str(error), "type": "value_error"}]
        ) from None


def _statistics_call(function: Any, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    try:
        return function(tables.metrics, options=options, runs=tables.runs)  # type: ignore[no-any-return]
    except StatisticsError as error:
        raise InvalidInputError(
            [{"loc": f"query.{error.field or 'options'}", "msg": str(error), "type": "value_error"}]
        ) from None


def _timestamp(value: datetime | None) -> pd.Timestamp | None:
    moment = as_utc(value)
    return pd.Timestamp(moment) if moment is not None else None


def with_trace(frame: pd.DataFrame, experiment: Experiment) -> pd.DataFrame:
    """The table with the experiment's trace columns in front."""
    traced = frame.copy()
    values: dict[str, Any] = {
        "experiment_id": str(experiment.id),
        "experiment_name": experiment.name,
        "spec_hash": experiment.spec_hash,
        "experiment_status": str(experiment.status),
        "experiment_created_at": _timestamp(experiment.created_at),
        "experiment_finished_at": _timestamp(experiment.finished_at),
    }
    for position, (column, value) in enumerate(values.items()):
        if column in traced.columns:
            traced = traced.drop(columns=column)
        traced.insert(position, column, pd.Series([value] * len(traced), index=traced.index, dtype=object))
    for column in ("experiment_created_at", "experiment_finished_at"):
        traced[column] = pd.to_datetime(traced[column], utc=True)
    return traced


def _run_times(tables: ExperimentTables) -> pd.DataFrame:
    runs = tables.runs
    if runs.empty:
        return pd.DataFrame(columns=["activation", "runs_started_at", "runs_finished_at"])
    times = runs[["activation", "started_at", "finished_at"]].copy()
    times["started_at"] = pd.to_datetime(times["started_at"].map(as_utc), utc=True)
    times["finished_at"] = pd.to_datetime(times["finished_at"].map(as_utc), utc=True)
    grouped = times.groupby("activation", sort=False).agg(
        runs_started_at=("started_at", "min"), runs_finished_at=("finished_at", "max")
    )
    return grouped.reset_index()


def summary_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per activation: statistics, rank, baseline comparison, run ids, seeds and timestamps."""
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation"]), tables.experiment)
    summary = _statistics_call(summarise_activations, tables, options)
    summary = summary.merge(_run_times(tables), on="activation", how="left")
    return with_trace(summary, tables.experiment)


def pairs_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """Every ordered pair of activations with its paired test and win/tie/loss outcome."""
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation", "opponent"]), tables.experiment)
    return with_trace(_statistics_call(compare_pairs, tables, options), tables.experiment)


def run_values_table(*, tables: ExperimentTables, options: ResultOptions) -> pd.DataFrame:
    """One row per run: its summary value of the metric and whether it entered the statistics."""
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["run_id"]), tables.experiment)
    return with_trace(_statistics_call(run_summaries, tables, options), tables.experiment)


def diagnostics_table(*, tables: ExperimentTables) -> pd.DataFrame:
    """One row per activation: gradient-norm ratios and flags, dead and saturated fractions, learned parameters."""
    if tables.runs.empty:
        return with_trace(pd.DataFrame(columns=["activation"]), tables.experiment)
    layers = tables.layers if not tables.layers.empty else pd.DataFrame(columns=list(repository.LAYER_COLUMNS))
    return with_trace(summarise_diagnostics(layers, runs=tables.runs), tables.experiment)


@dataclass(frozen=True)
class Recommendation:
    """The plain-language findings and the activations tied for best."""

    sentences: list[str]
    tied_best: list[str]


def _final_accuracy(tables: ExperimentTables, options: ResultOptions) -> dict[str, float]:
    accuracy_options = ResultOptions(
        metric="test_accuracy",
        summary="final",
        resamples=options.resamples,
        random_seed=options.random_seed,
        include_diverged=options.include_diverged,
    )
    summary = summarise_activations(tables.metrics, options=accuracy_options, runs=tables.runs)
    return {str(label): float(value) for label, value in zip(summary["activation"], summary["mean"], strict=True)}


def recommendation(
    *,
    tables: ExperimentTables,
    options: ResultOptions,
    summary: pd.DataFrame | None = None,
    pairs: pd.DataFrame | None = None,
    diagnostics: pd.DataFrame | None = None,
) -> Recommendation:
    """Findings built from the measured numbers only (see app.results.diagnostics.recommend)."""
    if tables.runs.empty or tables.metrics.empty:
        return Recommendation(["No epoch has finished yet, so there is nothing to compare."], [])
    summary = summary if summary is not None else summary_table(tables=tables, options=options)
    pairs = pairs if pairs is not None else pairs_table(tables=tables, options=options)
    diagnostics = diagnostics if diagnostics is not None else diagnostics_table(tables=tables)
    inputs = RecommendationInputs(
        summary=summary,
        pairs=pairs,
        diagnostics=diagnostics,
        final_accuracy=_final_accuracy(tables, options),
        classes=tables.classes,
        alpha=options.alpha,
    )
    return Recommendation(recommend(inputs), tied_best(summary, pairs))


def plot_image(*, tables: ExperimentTables, kind: str, image_format: str, options: ResultOptions) -> bytes:
    """One plot of the experiment as PNG or SVG bytes."""
    summary = pd.DataFrame(columns=["n"])
    run_values = None
    if kind == "final-metric" and not tables.runs.empty:
        summary = _statistics_call(summarise_activations, tables, options)
        run_values = _statistics_call(run_summaries, tables, options)
    learned = None
    if kind == "learned-functions" and not tables.layers.empty:
        learned = learned_parameters_by_layer(tables.layers)
    data = PlotData(
        metrics=tables.metrics,
        layer_metrics=tables.layers,
        summary=summary,
        activations=tables.activations,
        learned_by_layer=learned,
        run_values=run_values,
        title=tables.experiment.name,
    )
    try:
        return plot(kind, data=data, image_format=image_format)
    except ValueError as error:
        raise InvalidInputError([{"loc": "path.plot", "msg": str(error), "type": "enum"}]) from None


def image_media_type(image_format: str) -> str:
    """The Content-Type of an image format."""
    return IMAGE_MEDIA_TYPES[image_format]


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


def table_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as JSON-ready records: NaN as null, timestamps in ISO 8601, nested values kept."""
    columns = list(frame.columns)
    return [
        {column: json_ready(value) for column, value in zip(columns, row, strict=True)}
        for row in frame.itertuples(index=False, name=None)
    ]


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


def _iso(value: datetime | None) -> str | None:
    moment = as_utc(value)
    return moment.isoformat() if moment is not None else None


def _experiment_metadata(experiment: Experiment) -> dict[str, Any]:
    return {
        "archive_format_version": ARCHIVE_FORMAT_VERSION,
        "experiment_id": str(experiment.id),
        "name": experiment.name,
        "status": str(experiment.status),
        "spec_hash": experiment.spec_hash,
        "spec_version": experiment.spec_version,
        "created_at": _iso(experiment.created_at),
        "started_at": _iso(experiment.started_at),
        "finished_at": _iso(experiment.finished_at),
        "cancel_requested_at": _iso(experiment.cancel_requested_at),
        "error": experiment.error,
        "exported_at": utc_now().isoformat(),
    }


def export_archive(*, tables: ExperimentTables, options: ResultOptions) -> bytes:
    """A zip of spec.json, experiment.json, runs.csv, metrics.csv, layer_metrics.csv, results.csv, diagnostics.csv."""
    experiment = tables.experiment
    members: dict[str, bytes] = {
        "spec.json": json.dumps(experiment.spec, indent=2, sort_keys=True).encode(),
        "experiment.json": json.dumps(_experiment_metadata(experiment), indent=2).encode(),
        "runs.csv": encode_table(with_trace(_timestamps_utc(tables.runs), experiment), "csv"),
        "metrics.csv": encode_table(with_trace(_timestamps_utc(tables.metrics), experiment), "csv"),
        "layer_metrics.csv": encode_table(with_trace(tables.layers, experiment), "csv"),
        "results.csv": encode_table(summary_table(tables=tables, options=options), "csv"),
        "diagnostics.csv": encode_table(diagnostics_table(tables=tables), "csv"),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            # Member dates carry nothing (experiment.json has exported_at); a fixed one keeps them out of diffs.
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def _timestamps_utc(frame: pd.DataFrame) -> pd.DataFrame:
    converted = frame.copy()
    for column in converted.columns:
        if column.endswith("_at"):
            converted[column] = pd.to_datetime(converted[column].map(as_utc), utc=True)
    return converted


def archive_filename(experiment: Experiment) -> str:
    """A download name such as actlab-3f2a....zip."""
    return f"actlab-{experiment.id}.zip"


# ---- import -------------------------------------------------------------------------------------------------


def _archive_error(location: str, message: str) -> InvalidInputError:
    return InvalidInputError([{"loc": f"archive.{location}", "msg": message, "type": "invalid_archive"}])


def _read_members(content: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise _archive_error("zip", "the upload is not a zip archive; send the file GET .../export produced") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        missing = [name for name in ("spec.json", "runs.csv", "metrics.csv", "layer_metrics.csv") if name not in infos]
        if missing:
            raise _archive_error(
                "zip", f"the archive lacks {', '.join(missing)}; it must hold {', '.join(ARCHIVE_MEMBERS)}"
            )
        if sum(info.file_size for info in infos.values()) > ARCHIVE_MAX_UNCOMPRESSED_BYTES:
            raise _archive_error("zip", f"the archive expands beyond {ARCHIVE_MAX_UNCOMPRESSED_BYTES} bytes")
        wanted = ("spec.json", "experiment.json", "runs.csv", "metrics.csv", "layer_metrics.csv")
        try:
            return {name: archive.read(name) for name in wanted if name in infos}
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise _archive_error("zip", f"the archive is damaged: {error}") from None


def _read_csv(name: str, content: bytes, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype={"run_id": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=list(required))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise _archive_error(name, f"not readable as CSV: {error}") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise _archive_error(name, f"missing columns {', '.join(missing)}")
    return frame


def _parse_spec(content: bytes, limits: SpecLimits) -> tuple[Any, ExperimentSpec]:
    try:
        payload = json.loads(content)
    except (ValueError, UnicodeDecodeError) as error:
        raise _archive_error("spec.json", f"not valid JSON: {error}") from None
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


def _optional(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _optional_integer(value: Any, where: str) -> int | None:
    value = _optional(value)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _archive_error(where, f"{value!r} is not a whole number") from None
    if not number.is_integer():
        raise _archive_error(where, f"{value!r} is not a whole number")
    return int(number)


def _optional_datetime(value: Any, where: str) -> datetime | None:
    value = _optional(value)
    if value is None or value == "":
        return None
    try:
        moment = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise _archive_error(where, f"{value!r} is not a timestamp") from None
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    result: datetime = moment.to_pydatetime()
    return result


def _optional_json(value: Any, where: str) -> Any:
    value = _optional(value)
    if value is None or value == "":
        return None
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        raise _archive_error(where, f"{value!r} is not JSON") from None


def _numeric(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    for column in columns:
        if column not in frame.columns:
            frame[column] = np.nan
            continue
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _archive_error(f"{name}.{column}", f"row {row + 1}: {frame[column].iloc[row]!r} is not a number")
        frame[column] = converted


def _integers(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    _numeric(frame, columns, name)
    for column in columns:
        values = frame[column]
        if values.isna().any() or not np.all(np.equal(np.mod(values.to_numpy(dtype=float), 1), 0)):
            raise _archive_error(f"{name}.{column}", "every value must be a whole number")


_RUN_STATUSES = frozenset(str(status) for status in RunStatus)
_FINISHED = frozenset(str(status) for status in FINISHED_RUN_STATUSES)


@dataclass(frozen=True)
class ImportOutcome:
    """What an import created."""

    experiment: Experiment
    imported_from: str | None
    runs: int
    epoch_metrics: int
    layer_metrics: int


def _build_runs(
    runs_frame: pd.DataFrame, spec: ExperimentSpec, experiment_id: uuid.UUID
) -> tuple[list[Run], dict[str, uuid.UUID], bool]:
    """New Run rows for the archive's runs (checked against the spec's arms) and the old -> new id map."""
    _integers(runs_frame, ("activation_index", "seed"), "runs.csv")
    expected = {(arm.activation_index, arm.seed): arm.label for arm in spec.arms()}
    seen: set[tuple[int, int]] = set()
    mapping: dict[str, uuid.UUID] = {}
    runs: list[Run] = []
    unfinished = False
    for position, row in enumerate(runs_frame.to_dict("records"), start=1):
        where = f"runs.csv.row {position}"
        key = (int(row["activation_index"]), int(row["seed"]))
        if key not in expected:
            raise _archive_error(where, f"activation_index {key[0]} with seed {key[1]} is not an arm of spec.json")
        if key in seen:
            raise _archive_error(where, f"activation_index {key[0]} with seed {key[1]} appears twice")
        seen.add(key)
        if str(row["activation"]) != expected[key]:
            raise _archive_error(where, f"activation {row['activation']!r} should be {expected[key]!r} as in spec.json")
        status = str(row["status"])
        if status not in _RUN_STATUSES:
            raise _archive_error(where, f"status {status!r} must be one of {', '.join(sorted(_RUN_STATUSES))}")
        old_id = str(row["run_id"])
        if old_id in mapping:
            raise _archive_error(where, f"run_id {old_id} appears twice")
        new_id = uuid.uuid4()
        mapping[old_id] = new_id
        error = _optional(row.get("error"))
        if status not in _FINISHED:
            # Nothing will ever train an imported run: an unfinished one is stored as cancelled.
            unfinished = True
            error = f"imported while {status}; stored as cancelled"
            status = str(RunStatus.cancelled)
        arm_spec = spec.activations[key[0]]
        runs.append(
            Run(
                id=new_id,
                experiment_id=experiment_id,
                activation_index=key[0],
                activation_label=expected[key],
                activation_name=arm_spec.canonical_name,
                seed=key[1],
                status=status,
                attempt=_optional_integer(row.get("attempt"), f"{where}.attempt") or 0,
                queue=_optional(row.get("queue")),
                device=_optional(row.get("device")),
                worker_host=_optional(row.get("worker_host")),
                init_scheme=_optional(row.get("init_scheme")),
                parameter_count=_optional_integer(row.get("parameter_count"), f"{where}.parameter_count"),
                activation_placement=_optional(row.get("activation_placement")),
                training_path=_optional(row.get("training_path")),
                epochs_completed=_optional_integer(row.get("epochs_completed"), f"{where}.epochs_completed") or 0,
                diverged_epoch=_optional_integer(row.get("diverged_epoch"), f"{where}.diverged_epoch"),
                training_seconds=_optional(row.get("training_seconds")),
                info=_optional_json(row.get("info"), f"{where}.info"),
                error=error,
                created_at=_optional_datetime(row.get("created_at"), f"{where}.created_at") or utc_now(),
                enqueued_at=_optional_datetime(row.get("enqueued_at"), f"{where}.enqueued_at"),
                started_at=_optional_datetime(row.get("started_at"), f"{where}.started_at"),
                finished_at=_optional_datetime(row.get("finished_at"), f"{where}.finished_at"),
            )
        )
    missing = sorted(set(expected) - seen)
    if missing:
        index, seed = missing[0]
        raise _archive_error(
            "runs.csv", f"{len(missing)} arm(s) of spec.json have no run, e.g. {expected[(index, seed)]!r} seed {seed}"
        )
    return runs, mapping, unfinished


def _metric_rows(
    frame: pd.DataFrame,
    *,
    name: str,
    mapping: Mapping[str, uuid.UUID],
    keys: tuple[str, ...],
    values: tuple[str, ...],
    maximum_epoch: int,
) -> list[dict[str, Any]]:
    _integers(frame, keys, name)
    _numeric(frame, values, name)
    unknown = ~frame["run_id"].astype(str).isin(set(mapping))
    if unknown.any():
        position = int(np.flatnonzero(unknown.to_numpy())[0])
        raise _archive_error(
            f"{name}.run_id", f"row {position + 1}: run {frame['run_id'].iloc[position]} is not in runs.csv"
        )
    duplicated = frame.duplicated(subset=["run_id", *keys])
    if duplicated.any():
        position = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise _archive_error(
            name, f"row {position + 1} repeats the key ({', '.join(['run_id', *keys])}) of an earlier row"
        )
    epochs = frame["epoch"]
    if len(frame) and (epochs.min() < 0 or epochs.max() > maximum_epoch):
        raise _archive_error(f"{name}.epoch", f"epochs must lie between 0 and the spec's {maximum_epoch}")
    rows = []
    for record in frame.to_dict("records"):
        row: dict[str, Any] = {"run_id": mapping[str(record["run_id"])]}
        row.update({key: int(record[key]) for key in keys})
        row.update({value: _optional(record.get(value)) for value in values})
        row["attempt"] = _optional_integer(record.get("attempt"), f"{name}.attempt") or 0
        rows.append(row)
    return rows


def import_archive(
    *, session: Session, content: bytes, limits: SpecLimits, owner_id: uuid.UUID | None = None
) -> ImportOutcome:
    """Store an archive from GET .../export as a new experiment with its runs and metrics (statuses kept)."""
    members = _read_members(content)
    payload, spec = _parse_spec(members["spec.json"], limits)
    metadata: dict[str, Any] = {}
    if "experiment.json" in members:
        try:
            loaded = json.loads(members["experiment.json"])
        except (ValueError, UnicodeDecodeError) as error:
            raise _archive_error("experiment.json", f"not valid JSON: {error}") from None
        if not isinstance(loaded, dict):
            raise _archive_error("experiment.json", "must hold a JSON object")
        metadata = loaded
    experiment_id = uuid.uuid4()
    runs_frame = _read_csv(
        "runs.csv", members["runs.csv"], ("run_id", "activation", "activation_index", "seed", "status")
    )
    runs, mapping, unfinished = _build_runs(runs_frame, spec, experiment_id)
    epochs = spec.training.epochs
    epoch_frame = _read_csv("metrics.csv", members["metrics.csv"], ("run_id", "epoch"))
    if len(epoch_frame) > len(runs) * epochs:
        raise _archive_error("metrics.csv", f"{len(epoch_frame)} rows exceed arms x epochs = {len(runs) * epochs}")
    epoch_rows = _metric_rows(
        epoch_frame,
        name="metrics.csv",
        mapping=mapping,
        keys=("epoch",),
        values=EPOCH_NUMBER_FIELDS,
        maximum_epoch=epochs,
    )
    for row, flag in zip(
        epoch_rows, epoch_frame.get("gradient_flag", pd.Series([None] * len(epoch_frame))), strict=True
    ):
        flag = _optional(flag)
        if flag is not None and flag not in ("vanishing", "exploding"):
            raise _archive_error("metrics.csv.gradient_flag", f"{flag!r} must be vanishing, exploding or empty")
        row["gradient_flag"] = flag
    layer_frame = _read_csv(
        "layer_metrics.csv", members["layer_metrics.csv"], ("run_id", "epoch", "layer", "layer_name")
    )
    if len(layer_frame) > len(runs) * epochs * ARCHIVE_MAX_LAYERS_PER_EPOCH:
        raise _archive_error("layer_metrics.csv", "more rows than arms x epochs x layers allows")
    layer_rows = _metric_rows(
        layer_frame,
        name="layer_metrics.csv",
        mapping=mapping,
        keys=("epoch", "layer"),
        values=LAYER_NUMBER_FIELDS,
        maximum_epoch=epochs,
    )
    parameters = layer_frame.get("activation_parameters", pd.Series([None] * len(layer_frame)))
    for position, (row, names, value) in enumerate(
        zip(layer_rows, layer_frame["layer_name"], parameters, strict=True), start=1
    ):
        row["layer_name"] = str(names)[:80]
        row["activation_parameters"] = _optional_json(value, f"layer_metrics.csv.row {position}.activation_parameters")
    cancel_requested = _optional_datetime(metadata.get("cancel_requested_at"), "experiment.json.cancel_requested_at")
    if unfinished and cancel_requested is None:
        cancel_requested = utc_now()
    status = experiments_service.derive_experiment_status(
        run_statuses=[str(run.status) for run in runs], cancel_requested=cancel_requested is not None
    )
    started = [run.started_at for run in runs if run.started_at is not None]
    finished = [run.finished_at for run in runs if run.finished_at is not None]
    experiment = Experiment(
        id=experiment_id,
        name=spec.name,
        status=str(status),
        spec=spec.model_dump(mode="json"),
        submitted_spec=payload,
        spec_hash=spec.spec_hash(),
        spec_version=spec.version,
        device=spec.device,
        queue=None,
        total_epochs=len(runs) * epochs,
        idempotency_key=None,
        owner_id=owner_id,
        error=_optional(metadata.get("error")),
        created_at=_optional_datetime(metadata.get("created_at"), "experiment.json.created_at") or utc_now(),
        started_at=min(started) if started else None,
        finished_at=_optional_datetime(metadata.get("finished_at"), "experiment.json.finished_at")
        or (max(finished) if finished else utc_now()),
        cancel_requested_at=cancel_requested,
    )
    repository.insert_experiment_archive(
        session=session, experiment=experiment, runs=runs, epoch_rows=epoch_rows, layer_rows=layer_rows
    )
    session.commit()
    imported_from = metadata.get("experiment_id")
    return ImportOutcome(
        experiment=experiment,
        imported_from=str(imported_from) if imported_from else None,
        runs=len(runs),
        epoch_metrics=len(epoch_rows),
        layer_metrics=len(layer_rows),
    )
