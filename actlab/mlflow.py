"""Mirror an experiment into MLflow: ``actlab mirror mlflow ID`` and ``Experiment.to_mlflow(...)``.

Layout in MLflow (one MLflow experiment, by default named after the Activation Lab experiment):

- one parent run per Activation Lab experiment (tag ``actlab.kind=experiment``) holding the results
  table (``results.csv``), the recommendation (``recommendation.json``), the spec (``spec.json``) and
  the plots as artifacts;
- one child run per training run (``mlflow.parentRunId``; tag ``actlab.kind=run``) with params (the
  activation and its parameters, the seed, the cell's levels, every spec field flattened as
  ``spec.<path>``), per-epoch metrics logged with ``step=epoch`` (step 0: the network at initialisation),
  the final values (of the last trained epoch) as ``final.<metric>``,
  and tags linking back: experiment id, run id, spec hash and report URL.

Mirroring again never duplicates: runs are found by their ``actlab.run_id`` / ``actlab.experiment_id``
tag, their params must equal the ones already logged (MLflow params are immutable: a different value is
a ``MirrorConflict``), and only epochs not yet logged are appended. Metrics come from the service over
HTTP (the client), so the mirror runs wherever the client does; it needs only the skinny MLflow client
(``pip install 'activation-lab[mlflow]'``).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actlab.errors import ClientError

if TYPE_CHECKING:
    import pandas as pd

    from actlab.client import Experiment

MLFLOW_EXTRA = "activation-lab[mlflow]"
# Epoch columns logged as MLflow metrics (step = epoch); the rest of a metrics row is keys and trace. The
# server's EPOCH_NUMBER_FIELDS (app/models/epoch_metric.py) as the API serves them: the client imports nothing
# of the server, and a column the server adds later is not logged until it is named here.
EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "grad_norm_ratio",
    "epoch_seconds",
    "samples_per_second",
)
# Plots attached to the parent run (kinds of GET .../plots/{kind}.png that every experiment has).
PLOT_KINDS = ("learning-curves", "final-metric", "gradient-norms", "unit-health")
# MLflow's limits on one param value and on one log_batch call (mlflow/utils/validation.py).
_PARAM_VALUE_LIMIT = 6000
_BATCH_METRICS = 1000
_TAG = "actlab."


class MlflowUnavailableError(ClientError):
    """The MLflow client is not installed."""

    def __init__(self) -> None:
        super().__init__(f"mirroring to MLflow needs the MLflow client: pip install '{MLFLOW_EXTRA}'")


class MirrorConflict(ClientError):
    """An MLflow run already holds different params for the same Activation Lab run."""


@dataclass(frozen=True)
class MirrorSummary:
    """What one mirror did."""

    mlflow_experiment_id: str
    parent_run_id: str
    runs_created: int
    runs_found: int
    metrics_logged: int


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """Every leaf of a spec as (dotted path, text); lists are leaves (compact JSON)."""
    if isinstance(value, Mapping):
        for key in sorted(value):
            yield from _flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        yield prefix, text[:_PARAM_VALUE_LIMIT]


def run_params(spec: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, str]:
    """The params of one training run: activation, its parameters, seed, cell levels, the whole spec."""
    params = dict(_flatten({key: value for key, value in spec.items() if key != "activations"}, "spec"))
    params["activation"] = str(run["activation"])
    params["activation_name"] = str(run["activation_name"])
    params["seed"] = str(run["seed"])
    for activation in spec.get("activations", []):
        label = activation if isinstance(activation, str) else activation.get("label") or activation.get("name")
        if label == run["activation"] and isinstance(activation, Mapping):
            params.update(_flatten(activation.get("params", {}), "activation.params"))
    for path, level in sorted((run.get("cell_levels") or {}).items()):
        params.update(_flatten(level, f"cell.{path}"))
    return params


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _client(tracking_uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise MlflowUnavailableError() from error
    return MlflowClient(tracking_uri=tracking_uri)


def _mlflow_experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name))


def _find_run(client: Any, experiment_id: str, key: str, value: str) -> Any | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{_TAG}{key}` = '{value}'", max_results=2)
    return runs[0] if runs else None


def _check_params(run: Any, params: Mapping[str, str], label: str) -> dict[str, str]:
    """The params not yet logged; MirrorConflict when a logged one differs."""
    logged: Mapping[str, str] = run.data.params
    different = sorted(name for name, value in params.items() if name in logged and logged[name] != value)
    if different:
        shown = ", ".join(f"{name} (logged {logged[name]!r}, now {params[name]!r})" for name in different[:5])
        raise MirrorConflict(f"MLflow run {run.info.run_id} of {label} holds other params: {shown}")
    return {name: value for name, value in params.items() if name not in logged}


def _logged_steps(client: Any, run_id: str) -> set[int]:
    return {int(metric.step) for metric in client.get_metric_history(run_id, "test_accuracy")}


def _log_metrics(client: Any, run_id: str, rows: pd.DataFrame, skip_steps: set[int]) -> int:
    from mlflow.entities import Metric

    metrics = []
    for row in rows.to_dict("records"):
        epoch = int(row["epoch"])
        if epoch in skip_steps:
            continue
        for name in EPOCH_METRICS:
            number = _number(row.get(name))
            if number is not None:
                metrics.append(Metric(name, number, 0, epoch))
    for start in range(0, len(metrics), _BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH_METRICS])
    return len(metrics)


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(name, value) for name, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


# MLflow run statuses (FINISHED, FAILED, KILLED) of ended runs and experiments; others stay RUNNING.
_FINAL_STATUS = {"succeeded": "FINISHED", "diverged": "FINISHED", "cancelled": "KILLED"}
_EXPERIMENT_END = {"succeeded": "FINISHED", "partial": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def _end_status(run_status: str) -> str | None:
    if run_status in ("queued", "running"):
        return None
    return _FINAL_STATUS.get(run_status, "FAILED")


def _parent_artifacts(experiment: Experiment, detail: Mapping[str, Any], folder: Path) -> None:
    (folder / "spec.json").write_text(json.dumps(detail.get("spec"), indent=2, sort_keys=True), encoding="utf-8")
    experiment.results().to_csv(folder / "results.csv", index=False)
    recommendation = experiment.recommendation()
    (folder / "recommendation.json").write_text(json.dumps(recommendation, indent=2), encoding="utf-8")
    plots = folder / "plots"
    plots.mkdir()
    for kind in PLOT_KINDS:
        try:
            experiment.plot(kind, "png").save(plots / f"{kind}.png")
        except ClientError:
            continue  # a plot with nothing to draw yet (no epochs) is left out


def mirror_to_mlflow(
    experiment: Experiment,
    *,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    artifacts: bool = True,
) -> MirrorSummary:
    """Log the experiment's runs, metrics and results into MLflow; again later, append what is new."""
    client = _client(tracking_uri)
    detail = experiment.status()
    spec = detail.get("spec") or {}
    name = experiment_name or f"actlab {detail['name']}"
    mlflow_experiment_id = _mlflow_experiment(client, name)
    base_tags = {
        f"{_TAG}experiment_id": str(detail["id"]),
        f"{_TAG}spec_hash": str(detail["spec_hash"]),
        f"{_TAG}report_url": experiment.report_url,
    }
    parent = _find_run(client, mlflow_experiment_id, "parent_of", str(detail["id"]))
    if parent is None:
        parent = client.create_run(
            mlflow_experiment_id,
            run_name=str(detail["name"]),
            tags={**base_tags, f"{_TAG}kind": "experiment", f"{_TAG}parent_of": str(detail["id"])},
        )
    parent_id = parent.info.run_id
    metrics = experiment.metrics()
    created = found = logged = 0
    for run in detail.get("runs", []):
        run_id = str(run["id"])
        params = run_params(spec, run)
        label = f"run {run_id} ({run['activation']}, seed {run['seed']})"
        mirrored = _find_run(client, mlflow_experiment_id, "run_id", run_id)
        if mirrored is None:
            cell = f" [{run['cell']}]" if run.get("cell") else ""
            mirrored = client.create_run(
                mlflow_experiment_id,
                run_name=f"{run['activation']} seed {run['seed']}{cell}",
                tags={
                    **base_tags,
                    f"{_TAG}kind": "run",
                    f"{_TAG}run_id": run_id,
                    f"{_TAG}status": str(run["status"]),
                    "mlflow.parentRunId": parent_id,
                },
            )
            created += 1
            skip: set[int] = set()
        else:
            found += 1
            skip = _logged_steps(client, mirrored.info.run_id)
        mlflow_run_id = mirrored.info.run_id
        _log_params(client, mlflow_run_id, _check_params(mirrored, params, label))
        rows = metrics[metrics["run_id"] == run_id] if not metrics.empty else metrics
        if not rows.empty:
            # The newest attempt of each epoch (a resumed run may hold an epoch twice).
            order = ["epoch", "attempt"] if "attempt" in rows.columns else ["epoch"]
            rows = rows.sort_values(order).drop_duplicates("epoch", keep="last")
            logged += _log_metrics(client, mlflow_run_id, rows, skip)
            # Final values come from the last trained epoch; epoch 0 (initialisation, step 0) is no final.
            trained = rows[rows["epoch"] > 0]
            last = trained.iloc[-1] if not trained.empty else None
            for metric in ("test_accuracy", "test_loss", "train_accuracy", "train_loss"):
                number = _number(last.get(metric)) if last is not None else None
                if number is not None:
                    client.log_metric(mlflow_run_id, f"final.{metric}", number)
        client.set_tag(mlflow_run_id, f"{_TAG}status", str(run["status"]))
        status = _end_status(str(run["status"]))
        if status is not None:
            client.set_terminated(mlflow_run_id, status=status)
    if artifacts:
        with tempfile.TemporaryDirectory(prefix="actlab-mlflow-") as folder:
            _parent_artifacts(experiment, detail, Path(folder))
            client.log_artifacts(parent_id, folder)
    client.set_tag(parent_id, f"{_TAG}status", str(detail["status"]))
    # A queued or running experiment keeps its parent open; the next mirror appends and closes it.
    parent_status = _EXPERIMENT_END.get(str(detail["status"]))
    if parent_status is not None:
        client.set_terminated(parent_id, status=parent_status)
    return MirrorSummary(
        mlflow_experiment_id=mlflow_experiment_id,
        parent_run_id=parent_id,
        runs_created=created,
        runs_found=found,
        metrics_logged=logged,
    )


__all__ = [
    "MLFLOW_EXTRA",
    "MirrorConflict",
    "MirrorSummary",
    "MlflowUnavailableError",
    "mirror_to_mlflow",
    "run_params",
]
