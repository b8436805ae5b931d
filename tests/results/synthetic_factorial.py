"""A synthetic factorial (version-2) experiment stored through the ORM: one run per (cell, activation, seed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, Run
from app.spec import ExperimentSpec
from app.spec_factors import cell_columns, expand_cells
from tests.results.synthetic import SyntheticArm, synthetic_tables

FACTORIAL_SPEC: dict[str, Any] = {
    "version": 2,
    "name": "synthetic depth x lr",
    "dataset": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [16]},
    "activations": ["relu", "tanh", "sigmoid"],
    "seeds": [0, 1, 2, 3],
    "training": {"epochs": 3, "lr": 0.001},
    "device": "cpu",
    "factors": {"model.hidden": [[16], [16, 16, 16, 16]], "training.lr": [0.001, 0.01]},
}

METRIC_VALUES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_seconds")


def deep_sigmoid_fails(levels: Mapping[str, Any], label: str) -> float:
    """Final accuracy per (cell, activation): relu best everywhere, sigmoid near chance in the deep cells."""
    deep = len(levels["model.hidden"]) > 1
    return {"relu": 0.92, "tanh": 0.85, "sigmoid": 0.12 if deep else 0.80}[label]


def insert_factorial_experiment(
    session: Session,
    *,
    spec_payload: dict[str, Any] = FACTORIAL_SPEC,
    accuracy: Callable[[Mapping[str, Any], str], float] = deep_sigmoid_fails,
    failed: Callable[[Mapping[str, Any], str], bool] = lambda levels, label: False,
) -> uuid.UUID:
    """Store a finished factorial experiment whose runs carry their cell (``failed`` arms fail every seed)."""
    spec = ExperimentSpec.model_validate(spec_payload)
    start = datetime(2025, 11, 27, 10, 0, tzinfo=UTC)
    experiment = Experiment(
        id=uuid.uuid4(),
        name=spec.name,
        status="succeeded",
        spec=spec.model_dump(mode="json"),
        submitted_spec=spec_payload,
        spec_hash=spec.spec_hash(),
        spec_version=2,
        device=spec.device,
        queue="cpu",
        total_epochs=0,
        created_at=start,
        started_at=start,
        finished_at=start + timedelta(minutes=5),
    )
    session.add(experiment)
    for cell in expand_cells(spec):
        arms = [
            SyntheticArm(
                activation.display_label,
                activation.name,
                accuracy(cell.levels, activation.display_label),
                statuses=dict.fromkeys(spec.seeds, "failed") if failed(cell.levels, activation.display_label) else {},
            )
            for activation in spec.activations
        ]
        runs, metrics, _ = synthetic_tables(
            arms, seeds=spec.seeds, epochs=spec.training.epochs, random_seed=7 + cell.index
        )
        for record in runs.to_dict("records"):
            run = Run(
                id=uuid.uuid4(),
                experiment_id=experiment.id,
                activation_index=int(record["activation_index"]),
                activation_label=record["activation"],
                activation_name=record["activation_name"],
                seed=int(record["seed"]),
                status=record["status"],
                attempt=1,
                device="cpu",
                epochs_completed=spec.training.epochs,
                created_at=start,
                started_at=start,
                finished_at=start + timedelta(minutes=4),
                **cell_columns(cell),
            )
            session.add(run)
            session.flush()
            for row in metrics[metrics["run_id"] == record["run_id"]].to_dict("records"):
                values = {column: float(row[column]) for column in METRIC_VALUES}
                session.add(EpochMetric(run_id=run.id, epoch=int(row["epoch"]), attempt=1, lr=0.001, **values))
    session.commit()
    return experiment.id
