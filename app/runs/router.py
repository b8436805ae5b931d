"""HTTP endpoints of runs."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.dependencies import PrincipalDependency, SessionDependency
from app.models import Experiment, Run, RunStatus
from app.runs import service
from app.runs.schemas import RunDetail, RunLinks, RunTimings
from app.schemas import MessageResponse, ValidationErrorResponse

router = APIRouter(prefix="/v1", tags=["runs"])


def run_detail(run: Run, experiment: Experiment) -> RunDetail:
    """The API view of a run."""
    experiment_path = f"/v1/experiments/{run.experiment_id}"
    return RunDetail(
        id=run.id,
        experiment_id=run.experiment_id,
        activation=run.activation_label,
        activation_name=run.activation_name,
        activation_index=run.activation_index,
        seed=run.seed,
        cell=run.cell_label,
        cell_levels=run.cell_levels,
        status=RunStatus(run.status),
        attempt=run.attempt,
        queue=run.queue,
        device=run.device,
        worker_host=run.worker_host,
        init_scheme=run.init_scheme,
        parameter_count=run.parameter_count,
        activation_placement=run.activation_placement,
        training_path=run.training_path,
        time_gradients=run.time_gradients,
        stack_id=run.stack_id,
        stack_size=run.stack_size,
        stacking_reason=run.stacking_reason,
        epochs_planned=service.epochs_planned(experiment, run),
        epochs_completed=run.epochs_completed,
        diverged_epoch=run.diverged_epoch,
        timings=RunTimings(
            created_at=run.created_at,
            enqueued_at=run.enqueued_at,
            started_at=run.started_at,
            heartbeat_at=run.heartbeat_at,
            finished_at=run.finished_at,
            training_seconds=run.training_seconds,
        ),
        error=run.error,
        info=run.info,
        links=RunLinks(
            self=f"/v1/runs/{run.id}",
            experiment=experiment_path,
            metrics=f"{experiment_path}/metrics?run_id={run.id}",
            layer_metrics=f"{experiment_path}/layer-metrics?run_id={run.id}",
        ),
    )


@router.get(
    "/experiments/{experiment_id}/runs",
    response_model=list[RunDetail],
    summary="List the runs of an experiment",
    description="One run per (activation, seed) arm, in the order of the spec: activation, then seed.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
def list_runs(experiment_id: uuid.UUID, session: SessionDependency, principal: PrincipalDependency) -> list[RunDetail]:
    """The runs of an experiment."""
    experiment, runs = service.runs_of_experiment(session=session, experiment_id=experiment_id, viewer=principal)
    return [run_detail(run, experiment) for run in runs]


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    summary="Get a run",
    description="Status, attempts, device, worker host, init scheme, parameter count, timings and error.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
def get_run(run_id: uuid.UUID, session: SessionDependency, principal: PrincipalDependency) -> RunDetail:
    """One run."""
    run = service.require_run(session=session, run_id=run_id, viewer=principal)
    return run_detail(run, run.experiment)
