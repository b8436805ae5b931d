"""SQL of archives: store an imported experiment with its runs and metric rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, LayerMetric, Run


def insert_experiment_archive(
    *,
    session: Session,
    experiment: Experiment,
    runs: Sequence[Run],
    epoch_rows: Sequence[dict[str, Any]],
    layer_rows: Sequence[dict[str, Any]],
) -> None:
    """Stage an imported experiment, its runs and metric rows (bulk inserts); the caller commits."""
    session.add(experiment)
    session.add_all(runs)
    session.flush()
    if epoch_rows:
        session.execute(insert(EpochMetric), list(epoch_rows))
    if layer_rows:
        session.execute(insert(LayerMetric), list(layer_rows))
    session.flush()
