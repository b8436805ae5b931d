"""SQL of experiments and of the run rows the API writes (creation, seed extensions, cancel, retry, enqueue marks)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.orm import Session

from app.models import Experiment, Run, RunStatus, SeedExtension


def add_experiment(*, session: Session, experiment: Experiment, runs: Sequence[Run]) -> None:
    """Stage an experiment and its runs; the caller commits."""
    session.add(experiment)
    session.add_all(runs)
    session.flush()


def get_experiment(
    *, session: Session, experiment_id: uuid.UUID, for_update: bool = False, owner_id: uuid.UUID | None = None
) -> Experiment | None:
    """One experiment by id (only if ``owner_id`` owns it, when given); ``for_update`` locks its row and rereads it."""
    statement = select(Experiment).where(Experiment.id == experiment_id)
    if owner_id is not None:
        statement = statement.where(Experiment.owner_id == owner_id)
    if for_update:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return session.scalars(statement).first()


def experiment_exists(*, session: Session, experiment_id: uuid.UUID, owner_id: uuid.UUID | None = None) -> bool:
    """Whether the experiment exists (and ``owner_id`` owns it, when given): its id only, no row loaded."""
    statement = select(Experiment.id).where(Experiment.id == experiment_id)
    if owner_id is not None:
        statement = statement.where(Experiment.owner_id == owner_id)
    return session.execute(statement).first() is not None


def find_by_idempotency_key(*, session: Session, owner_id: uuid.UUID | None, key: str) -> Experiment | None:
    """The experiment an owner (or the anonymous user) created with this Idempotency-Key."""
    owner_clause = Experiment.owner_id.is_(None) if owner_id is None else Experiment.owner_id == owner_id
    return session.scalars(select(Experiment).where(owner_clause, Experiment.idempotency_key == key)).first()


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_experiments(
    *,
    session: Session,
    statuses: Sequence[str],
    name_contains: str | None,
    limit: int,
    offset: int,
    owner_id: uuid.UUID | None = None,
    dataset: str | None = None,
) -> tuple[list[Experiment], int]:
    """A page of experiments, newest first, and the number matching the filters (one owner's, when given).

    ``dataset`` (a catalog name) matches any level of a ``dataset.name`` factor, else the spec's dataset (the
    levels replace the base spec's dataset in every cell).
    """
    conditions = []
    if dataset:
        # The factor's levels as JSON text on both dialects (#>> / JSON_EXTRACT); a catalog name has no quotes
        # (its _ escaped), so the quoted name matches one whole level.
        levels = Experiment.spec[("factors", "dataset.name")].as_string()
        conditions.append(
            or_(
                levels.like(f'%"{_escape_like(dataset)}"%', escape="\\"),
                levels.is_(None) & (Experiment.spec["dataset"]["name"].as_string() == dataset),
            )
        )
    if owner_id is not None:
        conditions.append(Experiment.owner_id == owner_id)
    if statuses:
        conditions.append(Experiment.status.in_(list(statuses)))
    if name_contains:
        pattern = f"%{_escape_like(name_contains.lower())}%"
        conditions.append(func.lower(Experiment.name).like(pattern, escape="\\"))
    total = session.scalar(select(func.count()).select_from(Experiment).where(*conditions)) or 0
    page = session.scalars(
        select(Experiment)
        .where(*conditions)
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return list(page), int(total)


def cancel_queued_runs(*, session: Session, experiment_id: uuid.UUID, now: datetime) -> int:
    """Mark the experiment's queued runs cancelled in one conditional UPDATE; returns how many."""
    # The WHERE on status makes this safe against a worker claiming a run at the same moment:
    # whichever UPDATE commits first wins, and the other one matches no row.
    result = session.execute(
        update(Run)
        .where(Run.experiment_id == experiment_id, Run.status == RunStatus.queued)
        .values(status=RunStatus.cancelled, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def mark_runs_enqueued(*, session: Session, run_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Record that the broker accepted these runs' tasks."""
    if run_ids:
        session.execute(
            update(Run)
            .where(Run.id.in_(list(run_ids)))
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )


def queued_runs_never_enqueued(*, session: Session, experiment_id: uuid.UUID) -> list[uuid.UUID]:
    """Queued runs of the experiment whose task the broker never accepted."""
    return list(
        session.scalars(
            select(Run.id)
            .where(Run.experiment_id == experiment_id, Run.status == RunStatus.queued, Run.enqueued_at.is_(None))
            .order_by(Run.activation_index, Run.seed)
        )
    )


def add_seed_extension(*, session: Session, extension: SeedExtension, runs: Sequence[Run]) -> None:
    """Stage a seed-extension request and the runs it adds; the caller commits."""
    session.add(extension)
    session.add_all(runs)
    session.flush()


def list_seed_extensions(*, session: Session, experiment_id: uuid.UUID) -> list[SeedExtension]:
    """The seed-extension requests of an experiment, oldest first."""
    return list(
        session.scalars(
            select(SeedExtension)
            .where(SeedExtension.experiment_id == experiment_id)
            .order_by(SeedExtension.created_at, SeedExtension.id)
        )
    )


def requeue_runs(*, session: Session, run_ids: Sequence[uuid.UUID], from_statuses: Sequence[str]) -> list[uuid.UUID]:
    """Put these runs back to queued, not yet enqueued, if they are still in ``from_statuses``; the ids moved.

    The attempt counter is kept (the next claim increments it, fencing any earlier writer), and so are
    the epochs completed and their metrics: the worker resumes from the run's checkpoint, and epochs it
    trains again overwrite their rows.
    """
    if not run_ids:
        return []
    result = session.execute(
        update(Run)
        .where(Run.id.in_(list(run_ids)), Run.status.in_(list(from_statuses)))
        .values(status=RunStatus.queued, enqueued_at=None, finished_at=None, error=None)
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    return list(result.scalars())


def bump_results_version(*, session: Session, experiment_id: uuid.UUID) -> None:
    """Count one change of the experiment's results: its cached result responses stop being served."""
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id)
        .values(results_version=Experiment.results_version + 1)
        .execution_options(synchronize_session=False)
    )


def bump_results_version_of_runs(*, session: Session, run_ids: Sequence[uuid.UUID]) -> None:
    """``bump_results_version`` of the experiments these runs belong to (one statement)."""
    experiments = select(Run.experiment_id).where(Run.id.in_(list(run_ids))).scalar_subquery()
    session.execute(
        update(Experiment)
        .where(Experiment.id.in_(experiments))
        .values(results_version=Experiment.results_version + 1)
        .execution_options(synchronize_session=False)
    )


# The columns of the status response (GET /v1/experiments/{id}), read as plain rows: no ORM objects, no
# submitted spec, and the canonical spec as the JSON text it is stored as (app.experiments.detail).
DETAIL_COLUMNS = (
    Experiment.id,
    Experiment.name,
    Experiment.status,
    Experiment.spec_hash,
    Experiment.device,
    Experiment.queue,
    Experiment.created_at,
    Experiment.started_at,
    Experiment.finished_at,
    Experiment.cancel_requested_at,
    Experiment.total_epochs,
    Experiment.spec_version,
    Experiment.error,
    cast(Experiment.spec, Text).label("spec_json"),
)
DETAIL_RUN_COLUMNS = (
    Run.id,
    Run.activation_label,
    Run.activation_name,
    Run.seed,
    Run.cell_label,
    Run.cell_levels,
    Run.status,
    Run.attempt,
    Run.epochs_completed,
    Run.error,
    Run.seed_extension_id,
)


def experiment_detail_rows(
    *, session: Session, experiment_id: uuid.UUID, owner_id: uuid.UUID | None = None
) -> tuple[Any, list[Any], list[Any]] | None:
    """The experiment's DETAIL_COLUMNS, its runs' DETAIL_RUN_COLUMNS in grid order and its seed extensions
    (id, seeds, created_at, oldest first); None when it does not exist (or ``owner_id`` does not own it)."""
    statement = select(*DETAIL_COLUMNS).where(Experiment.id == experiment_id)
    if owner_id is not None:
        statement = statement.where(Experiment.owner_id == owner_id)
    experiment = session.execute(statement).first()
    if experiment is None:
        return None
    runs = list(
        session.execute(
            select(*DETAIL_RUN_COLUMNS)
            .where(Run.experiment_id == experiment_id)
            .order_by(Run.cell_index, Run.activation_index, Run.seed)
        )
    )
    extensions: list[Any] = []
    # Every seed extension adds runs that name it: without such a run there is none to read.
    if any(run.seed_extension_id is not None for run in runs):
        extensions = list(
            session.execute(
                select(SeedExtension.id, SeedExtension.seeds, SeedExtension.created_at)
                .where(SeedExtension.experiment_id == experiment_id)
                .order_by(SeedExtension.created_at, SeedExtension.id)
            )
        )
    return experiment, runs, extensions
