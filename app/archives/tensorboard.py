"""An experiment as TensorBoard event files: one folder per run, zipped (``export?format=tensorboard``).

Each run's folder holds one event file written with the ``tensorboard`` package's own writer
(``EventFileWriter``; never torch in the API):

- scalars per epoch (``step`` = epoch, step 0 the network at initialisation): every number of the epoch
  table under ``epoch/<field>``;
- per-layer values as scalar groups, one tag per layer: ``grad_norm/<NN>_<layer>``,
  ``dead_fraction/<NN>_<layer>`` and ``saturated_fraction/<NN>_<layer>``;
- the run's hyperparameters for the HParams tab: activation, seed and the cell's levels (one per
  factor path), with the final test accuracy and loss as its metrics.

The root folder holds the HParams experiment summary (which hyperparameters and metrics exist), so
TensorBoard's HParams tab lists every run side by side. The protocol is the one of TensorBoard's hparams
plugin (``tensorboard/plugins/hparams/metadata.py``: plugin name ``hparams``, content an
``HParamsPluginData`` with an ``experiment`` or a ``session_start_info``).

The ``tensorboard`` package is optional (the ``tensorboard`` extra): without it
``TensorBoardUnavailableError`` says which extra to install and the endpoint answers 501.
"""

from __future__ import annotations

import io
import math
import tempfile
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from app.archives.service import ExportedArchive
from app.models.epoch_metric import EPOCH_NUMBER_FIELDS
from app.results import service as results_service
from app.spec_factors import level_text

TENSORBOARD_EXTRA = "activation-lab[tensorboard]"
# Per-layer fields drawn as scalar groups: the gradient flow and the unit health of each layer.
LAYER_SCALAR_FIELDS = ("grad_norm", "dead_fraction", "saturated_fraction")
# The run summary TensorBoard's HParams tab compares (the last epoch of the run).
HPARAM_METRICS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
_HPARAMS_PLUGIN = "hparams"
_HPARAMS_PLUGIN_VERSION = 0


class TensorBoardUnavailableError(RuntimeError):
    """The ``tensorboard`` package is not installed in the API's environment."""

    def __init__(self) -> None:
        super().__init__(
            f"format=tensorboard needs the tensorboard package: pip install '{TENSORBOARD_EXTRA}' "
            "(the re-importable format=zip needs nothing more)"
        )


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package can be imported."""
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
    except ImportError:
        return False
    return True


def run_folder(run: pd.Series) -> str:
    """A run's folder name: cell, activation and seed (readable in TensorBoard's run list), then its id."""
    parts = []
    if isinstance(run.get("cell_label"), str) and run["cell_label"]:
        parts.append(run["cell_label"].replace(", ", ",").replace("=", "-"))
    parts.extend([str(run["activation"]), f"seed{int(run['seed'])}", str(run["run_id"])[:8]])
    return "_".join("".join(c if c.isalnum() or c in "-_.,x" else "-" for c in part) for part in parts)


def _scalar(tag: str, value: float) -> Any:
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def _hparams_summary(data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=_HPARAMS_PLUGIN, content=data.SerializeToString()
        )
    )
    # The tag names which message the content carries (metadata.EXPERIMENT_TAG / SESSION_START_INFO_TAG).
    tag = "_hparams_/experiment" if data.HasField("experiment") else "_hparams_/session_start_info"
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata)])


def _hparam_value(value: Any) -> Any:
    from google.protobuf import struct_pb2

    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def _run_hparams(run: pd.Series, factor_paths: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {"activation": str(run["activation"]), "seed": int(run["seed"])}
    levels = run.get("cell_levels")
    for path in factor_paths:
        level = levels.get(path) if isinstance(levels, dict) else None
        values[path] = level_text(level) if level is not None else ""
    return values


def _experiment_summary(hparam_names: Iterable[str]) -> Any:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    experiment = api_pb2.Experiment(
        hparam_infos=[api_pb2.HParamInfo(name=name) for name in hparam_names],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"epoch/{name}")) for name in HPARAM_METRICS],
    )
    return _hparams_summary(plugin_data_pb2.HParamsPluginData(version=_HPARAMS_PLUGIN_VERSION, experiment=experiment))


def _session_summary(hparams: dict[str, Any]) -> Any:
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo()
    for name, value in hparams.items():
        start.hparams[name].CopyFrom(_hparam_value(value))
    return _hparams_summary(
        plugin_data_pb2.HParamsPluginData(version=_HPARAMS_PLUGIN_VERSION, session_start_info=start)
    )


def _finite(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _layer_tag(field: str, layer: Any, name: Any) -> str:
    return f"{field}/{int(layer):02d}_{name}"


def _write_run(
    writer: Any, run: pd.Series, hparams: dict[str, Any], epochs: pd.DataFrame, layers: pd.DataFrame
) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    def write(summary: Any, step: int) -> None:
        # Wall time 0: the export of the same rows is the same bytes (the epochs' times are scalars).
        writer.add_event(event_pb2.Event(step=step, wall_time=0.0, summary=summary))

    write(_session_summary(hparams), 0)
    for row in epochs.itertuples(index=False):
        step = int(row.epoch)
        values = [
            _scalar(f"epoch/{name}", number)
            for name in EPOCH_NUMBER_FIELDS
            if (number := _finite(getattr(row, name))) is not None
        ]
        if values:
            write(summary_pb2.Summary(value=values), step)
    for (epoch, _), group in layers.groupby(["epoch", "attempt"], sort=True):
        values = [
            _scalar(_layer_tag(name, layer_row.layer, layer_row.layer_name), number)
            for layer_row in group.itertuples(index=False)
            for name in LAYER_SCALAR_FIELDS
            if (number := _finite(getattr(layer_row, name))) is not None
        ]
        if values:
            write(summary_pb2.Summary(value=values), int(epoch))


def _last_attempt(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each epoch's newest attempt (a resumed run may hold an epoch twice)."""
    if frame.empty:
        return frame
    newest = frame.groupby(["run_id", "epoch"])["attempt"].transform("max")
    return frame[frame["attempt"] == newest]


def export_tensorboard(*, session: Session, experiment_id: uuid.UUID) -> ExportedArchive:
    """The experiment's runs as TensorBoard event folders in one zip; NotFoundError when it does not exist."""
    if not tensorboard_available():
        raise TensorBoardUnavailableError()
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    tables = results_service.load_tables(session=session, experiment_id=experiment_id)
    runs = tables.runs.merge(tables.cells, on="run_id", how="left") if not tables.cells.empty else tables.runs
    factor_paths = list(tables.factors)
    metrics = _last_attempt(tables.metrics)
    layers = _last_attempt(tables.layers)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="actlab-tensorboard-") as folder:
        root = Path(folder)
        writer = EventFileWriter(str(root))
        writer.add_event(_experiment_event(["activation", "seed", *factor_paths]))
        writer.close()
        for _, run in runs.iterrows():
            run_id = run["run_id"]
            writer = EventFileWriter(str(root / run_folder(run)))
            _write_run(
                writer,
                run,
                _run_hparams(run, factor_paths),
                metrics[metrics["run_id"] == run_id].sort_values("epoch"),
                layers[layers["run_id"] == run_id].sort_values(["epoch", "layer"]),
            )
            writer.close()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(root).as_posix())
    return ExportedArchive(filename=f"actlab-{tables.experiment.id}-tensorboard.zip", content=buffer.getvalue())


def _experiment_event(hparam_names: list[str]) -> Any:
    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(step=0, wall_time=0.0, summary=_experiment_summary(hparam_names))
