"""Rules of reading runs: lookups that fail with a clear 404."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.auth.schemas import Principal
from app.auth.service import owner_filter_for
from app.experiments import service as experiments_service
from app.models import Experiment, Run
from app.runs import repository
from app.service_errors import NotFoundError
from app.spec_factors import run_spec

# Factor paths that change a run's evaluations apart from training.epochs.
STEP_BUDGET_PATHS = frozenset({"training.steps", "training.eval_every"})


def require_run(*, session: Session, run_id: uuid.UUID, viewer: Principal | None = None) -> Run:
    """The run if ``viewer`` (default: the current caller) may see its experiment, else NotFoundError."""
    run = repository.get_run(session=session, run_id=run_id)
    owner_filter = owner_filter_for(viewer)
    if run is None or (owner_filter is not None and run.experiment.owner_id != owner_filter):
        raise NotFoundError(f"run {run_id} not found")
    return run


def runs_of_experiment(
    *, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None
) -> tuple[Experiment, list[Run]]:
    """The experiment and its runs in grid order, or NotFoundError (another owner's experiment included)."""
    return experiments_service.experiment_with_runs(session=session, experiment_id=experiment_id, viewer=viewer)


def epochs_planned(experiment: Experiment, run: Run) -> int:
    """The trained metrics rows the run is meant to have: its cell's epochs, or the evaluations of a step budget."""
    training, factors = experiment.spec["training"], experiment.spec.get("factors") or {}
    if "steps" not in training and not STEP_BUDGET_PATHS & set(factors):
        return int(training["epochs"])  # read as stored: no spec to validate per run of a listing
    return run_spec(experiment.spec, run.cell_levels).training.evaluations
