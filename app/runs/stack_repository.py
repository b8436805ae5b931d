"""SQL of stacked training on the worker side: which runs a worker may train together with one it claimed.

A worker that claims a run of an experiment also claims other runs of that experiment and
trains them as one stacked model. The claims themselves go through ``claim_run`` (fenced, one
attempt more per claim); this module only finds the candidates and the facts that size a stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import EpochMetric, Experiment, Run, RunStatus


def experiment_of_run(*, session: Session, run_id: uuid.UUID) -> uuid.UUID | None:
    """The id of the run's experiment, or None when the run does not exist."""
    return session.execute(select(Run.experiment_id).where(Run.id == run_id)).scalar_one_or_none()


def run_count(*, session: Session, experiment_id: uuid.UUID) -> int:
    """How many runs (arms) the experiment has, whatever their status."""
    count = session.execute(
        select(func.count()).select_from(Run).where(Run.experiment_id == experiment_id)
    ).scalar_one()
    return int(count)


def runs_left_by_task(
    *, session: Session, experiment_id: uuid.UUID, task_id: str, exclude: Collection[uuid.UUID] = ()
) -> list[uuid.UUID]:
    """Running runs of the experiment claimed under ``task_id``: an earlier delivery of this very task left them.

    A task id is delivered to one worker at a time, so such runs belong to an attempt that is
    gone (its worker was lost, or the task is being retried) and the new delivery takes them back.
    """
    statement = (
        select(Run.id)
        .where(Run.experiment_id == experiment_id, Run.task_id == task_id, Run.status == RunStatus.running.value)
        .order_by(Run.created_at, Run.activation_index, Run.seed)
    )
    return [run_id for run_id in session.execute(statement).scalars() if run_id not in exclude]


def queued_runs_to_stack(
    *,
    session: Session,
    experiment_id: uuid.UUID,
    queue: str | None,
    attempt_limit: int,
    limit: int,
    cell_indices: Collection[int] = (0,),
) -> list[uuid.UUID]:
    """Up to ``limit`` queued runs of the experiment's cells ``cell_indices`` on ``queue`` that may still be started.

    The cells are those one stack may span (``app.spec_factors.stacking_cells``: specs equal but for the
    fields each member gets at initialisation); other cells differ in architecture or training settings,
    which one stack shares, so they stack apart.

    Highest seed first, every activation of a seed together: each stack gets a mix of activations
    (cheap and dear ones), so the stacks of an experiment take about equally long. And the tasks are
    sent activation-major (all seeds of the first activation first), so the next task in the queue,
    the first activation's second seed, is for a run still queued: the next free worker process
    starts its own stack at once instead of first skipping tasks of runs taken here. Runs that used
    ``attempt_limit`` attempts are left to their own task, which records that they gave up.
    """
    if limit <= 0:
        return []
    statement = (
        select(Run.id)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(
            Run.experiment_id == experiment_id,
            Run.cell_index.in_(list(cell_indices)),
            Run.status == RunStatus.queued.value,
            Run.attempt < attempt_limit,
        )
        .order_by(Run.seed.desc(), Run.activation_index.desc(), Run.cell_index)
        .limit(limit)
    )
    if queue is not None:
        statement = statement.where(func.coalesce(Run.queue, Experiment.queue) == queue)
    return list(session.execute(statement).scalars())


def recorded_training_seconds(*, session: Session, run_id: uuid.UUID) -> float:
    """The run's training time so far: the sum of its stored epochs' seconds, earlier attempts' epochs included."""
    total = session.execute(
        select(func.coalesce(func.sum(EpochMetric.epoch_seconds), 0.0)).where(EpochMetric.run_id == run_id)
    ).scalar_one()
    return float(total or 0.0)


def unfinished_runs_of_task(*, session: Session, task_id: str, run_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
    """Running runs claimed under ``task_id`` in the experiments of ``run_ids`` (the runs a stacked task trained)."""
    if not run_ids:
        return []
    experiments = select(Run.experiment_id).where(Run.id.in_(list(run_ids)))
    statement = select(Run.id).where(
        Run.experiment_id.in_(experiments), Run.task_id == task_id, Run.status == RunStatus.running.value
    )
    return list(session.execute(statement).scalars())
