"""The worker's metric writes: idempotent, fenced upserts of one epoch's rows, and a run's robustness rows.

A redelivered run writes its epochs again; the upsert on (run_id, epoch) and
(run_id, epoch, layer) turns that into an update, so there is never a second row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from app.db import upsert
from app.experiments.repository import bump_results_version_of_runs
from app.models import EpochMetric, LayerMetric, RobustnessResult
from app.models.epoch_metric import EPOCH_VALUE_FIELDS
from app.models.layer_metric import LAYER_VALUE_FIELDS
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS
from app.numbers import finite_tree
from app.runs.state_repository import fence_run

if TYPE_CHECKING:
    from worker.training.reports import EpochReport, RobustnessPoint

_LAYER_FIELDS = ("layer_name", *LAYER_VALUE_FIELDS)


def upsert_epoch_metrics(*, session: Session, run_id: uuid.UUID, attempt: int, report: EpochReport) -> None:
    """Write one epoch's row and its layer rows for ``attempt``; raises StaleAttemptError if a newer attempt owns the run.

    The fence comes first, so it locks the run row before any metric row is touched and a
    concurrent claim waits for this transaction to end.
    """
    fence_run(session=session, run_id=run_id, attempt=attempt)
    upsert_epoch_metrics_of_runs(session=session, writes=[(run_id, attempt, report)])


def upsert_epoch_metrics_of_runs(*, session: Session, writes: Sequence[tuple[uuid.UUID, int, EpochReport]]) -> None:
    """Write one epoch's rows of several runs, (run id, attempt, report) each, in two statements (a stacked epoch).

    Unfenced: fence every run first in the same transaction (``fence_run`` or ``record_epoch_progress``
    with its attempt), which locks its row until the commit; a run whose fence failed is left out.
    """
    if not writes:
        return
    epoch_rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    for run_id, attempt, report in writes:
        epoch_row: dict[str, Any] = {"run_id": run_id, "epoch": report.epoch, "attempt": attempt}
        epoch_row.update({name: finite_tree(getattr(report, name)) for name in EPOCH_VALUE_FIELDS})
        epoch_rows.append(epoch_row)
        for layer in report.layers:
            row: dict[str, Any] = {"run_id": run_id, "epoch": report.epoch, "layer": layer.layer, "attempt": attempt}
            row.update({name: finite_tree(getattr(layer, name)) for name in _LAYER_FIELDS})
            layer_rows.append(row)
    upsert(session, EpochMetric.__table__, epoch_rows, ("run_id", "epoch"))  # type: ignore[arg-type]
    if layer_rows:
        upsert(session, LayerMetric.__table__, layer_rows, ("run_id", "epoch", "layer"))  # type: ignore[arg-type]
    # New rows change the results: cached responses of the experiment stop being served (app.results.cache).
    # The writer holds the experiment's lock already (lock_experiment_of_run), so this takes no new lock.
    bump_results_version_of_runs(session=session, run_ids=[run_id for run_id, _, _ in writes])


def replace_robustness(*, session: Session, run_id: uuid.UUID, attempt: int, points: Sequence[RobustnessPoint]) -> None:
    """Write a run's robustness rows (one per kind and strength), replacing any earlier attempt's.

    Unfenced: call it after ``finish_run`` of the same attempt in the same transaction, which fences the
    run. With the unique key (run_id, kind, strength) a run has each point exactly once, however often
    its end is recorded.
    """
    session.execute(delete(RobustnessResult).where(RobustnessResult.run_id == run_id))
    if not points:
        return
    rows = [
        {
            "run_id": run_id,
            "kind": point.kind,
            "strength": point.strength,
            "attempt": attempt,
            **{name: finite_tree(getattr(point, name)) for name in ROBUSTNESS_VALUE_FIELDS},
        }
        for point in points
    ]
    session.execute(insert(RobustnessResult), rows)
