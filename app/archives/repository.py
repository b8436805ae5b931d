"""SQL of archives: store an imported experiment with its runs and metric rows in batches, or remove it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, ResultCacheEntry, RobustnessResult, Run


def insert_experiment_with_runs(*, session: Session, experiment: Experiment, runs: Sequence[Run]) -> None:
    """Stage an imported experiment and its runs; the caller commits."""
    session.add(experiment)
    session.add_all(runs)
    session.flush()


def insert_metric_rows(
    *,
    session: Session,
    model: type[EpochMetric] | type[LayerMetric] | type[RobustnessResult],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Stage one batch of metric rows (a bulk insert); the caller commits."""
    if rows:
        session.execute(insert(model), list(rows))


def delete_experiment(*, session: Session, experiment_id: uuid.UUID) -> None:
    """Stage deleting an experiment with its runs, metric rows and cached results (an import that failed midway)."""
    runs = select(Run.id).where(Run.experiment_id == experiment_id)
    session.execute(delete(RobustnessResult).where(RobustnessResult.run_id.in_(runs)))
    session.execute(delete(LayerMetric).where(LayerMetric.run_id.in_(runs)))
    session.execute(delete(EpochMetric).where(EpochMetric.run_id.in_(runs)))
    session.execute(delete(Run).where(Run.experiment_id == experiment_id))
    session.execute(delete(ResultCacheEntry).where(ResultCacheEntry.experiment_id == experiment_id))
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
