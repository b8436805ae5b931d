"""HTTP endpoints of experiments: submit, list, get, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool

from app.dependencies import (
    DispatcherDependency,
    JsonBody,
    PrincipalDependency,
    SessionDependency,
    SettingsDependency,
)
from app.experiments import service
from app.experiments.schemas import ExperimentDetail, ExperimentPage, ExperimentSummary, RunSummary, experiment_links
from app.models import Experiment, ExperimentStatus, Run
from app.quotas.service import SubmissionQuotas
from app.runs.repository import RunCounts
from app.schemas import MessageResponse, NoNulText, ValidationErrorResponse
from app.spec import EXAMPLE_SPEC

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

_SPEC_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The experiment spec (version 1); GET /v1/catalog lists the names it may use.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ExperimentSpec"},
                "examples": {
                    "classic_five": {
                        "summary": "Five classic activations and a formula on MNIST-1D",
                        "value": EXAMPLE_SPEC,
                    },
                    "smallest": {
                        "summary": "The smallest useful grid",
                        "value": {
                            "name": "relu vs tanh",
                            "dataset": {"name": "digits"},
                            "model": {"kind": "mlp", "hidden": [32]},
                            "activations": ["relu", "tanh"],
                            "seeds": [0, 1],
                            "training": {"epochs": 3},
                        },
                    },
                },
            }
        },
    }
}


def experiment_detail(experiment: Experiment, runs: Sequence[Run]) -> ExperimentDetail:
    """The API view of an experiment with its runs."""
    return ExperimentDetail(
        id=experiment.id,
        name=experiment.name,
        status=ExperimentStatus(experiment.status),
        spec_hash=experiment.spec_hash,
        device=experiment.device,
        queue=experiment.queue,
        created_at=experiment.created_at,
        started_at=experiment.started_at,
        finished_at=experiment.finished_at,
        cancel_requested_at=experiment.cancel_requested_at,
        progress=service.progress_from_counts(
            counts=service.counts_of_runs(runs), total_epochs=experiment.total_epochs
        ),
        links=experiment_links(experiment.id),
        spec_version=experiment.spec_version,
        error=experiment.error,
        spec=experiment.spec,
        runs=[
            RunSummary(
                id=run.id,
                activation=run.activation_label,
                activation_name=run.activation_name,
                seed=run.seed,
                status=run.status,
                attempt=run.attempt,
                epochs_completed=run.epochs_completed,
                error=run.error,
            )
            for run in runs
        ],
    )


def _experiment_summary(experiment: Experiment, counts: RunCounts | None) -> ExperimentSummary:
    return ExperimentSummary(
        id=experiment.id,
        name=experiment.name,
        status=ExperimentStatus(experiment.status),
        spec_hash=experiment.spec_hash,
        device=experiment.device,
        queue=experiment.queue,
        created_at=experiment.created_at,
        started_at=experiment.started_at,
        finished_at=experiment.finished_at,
        cancel_requested_at=experiment.cancel_requested_at,
        progress=service.progress_from_counts(counts=counts or RunCounts({}, {}), total_epochs=experiment.total_epochs),
        links=experiment_links(experiment.id),
    )


@router.post(
    "",
    status_code=202,
    response_model=ExperimentDetail,
    summary="Submit an experiment",
    description="Validates the spec, stores the experiment with one run per (activation, seed) arm and queues "
    "the runs. Send an `Idempotency-Key` header to make retries safe: a repeated request with the same key and "
    "spec returns the first experiment (status 200) instead of creating another; the same key with another "
    "spec is a 409; keys are per API key, so two owners never collide. Nothing is stored when the spec is "
    "rejected. Per-owner quotas (queued and running arms, submissions per minute) answer 429 with Retry-After.",
    responses={
        200: {"model": ExperimentDetail, "description": "A retry with a known Idempotency-Key: the same experiment."},
        409: {"model": MessageResponse, "description": "The Idempotency-Key was used with a different spec."},
        413: {"model": MessageResponse, "description": "The body is over the size limit (setting max_body_bytes)."},
        422: {"model": ValidationErrorResponse, "description": "The spec is invalid; each bad field is named."},
        429: {
            "model": MessageResponse,
            "description": "Over a quota of this API key; the Retry-After header says when to try again.",
            "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
        },
        503: {"model": MessageResponse, "description": "Stored, but the broker did not accept the runs."},
    },
    openapi_extra=_SPEC_REQUEST_BODY,
)
async def submit_experiment(
    payload: JsonBody,
    response: Response,
    session: SessionDependency,
    dispatcher: DispatcherDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Any unique string (a UUID is a good choice) that makes a retried submission safe.",
        ),
    ] = None,
) -> ExperimentDetail:
    """Submit an experiment spec."""
    submission = await run_in_threadpool(
        lambda: service.submit_experiment(
            session=session,
            dispatcher=dispatcher,
            payload=payload,
            limits=settings,
            idempotency_key=idempotency_key,
            owner_id=principal.owner_id,
            quotas=SubmissionQuotas.from_settings(settings),
        )
    )
    response.status_code = 202 if submission.created else 200
    response.headers["Location"] = f"/v1/experiments/{submission.experiment.id}"
    return experiment_detail(submission.experiment, submission.runs)


@router.get(
    "",
    response_model=ExperimentPage,
    summary="List experiments",
    description="Newest first; filter by one or more statuses and by a case-insensitive name substring. "
    "Lists the experiments of the calling API key (an admin key sees every owner's).",
    responses={422: {"model": ValidationErrorResponse}},
)
def list_experiments(
    session: SessionDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
    status: Annotated[list[ExperimentStatus] | None, Query(description="Keep these statuses (repeatable).")] = None,
    name: Annotated[NoNulText | None, Query(max_length=200, description="Part of the name, any case.")] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default 50, at most page_size_limit).")] = None,
    offset: Annotated[int, Query(ge=0, le=2_000_000_000, description="Experiments to skip.")] = 0,
) -> ExperimentPage:
    """A page of experiments."""
    page_size = limit if limit is not None else min(50, settings.page_size_limit)
    listing = service.list_experiments(
        session=session,
        statuses=status or [],
        name_contains=name,
        limit=page_size,
        offset=offset,
        page_size_limit=settings.page_size_limit,
        viewer=principal,
    )
    next_offset = offset + page_size if offset + page_size < listing.total else None
    return ExperimentPage(
        items=[
            _experiment_summary(experiment, listing.counts.get(experiment.id)) for experiment in listing.experiments
        ],
        total=listing.total,
        limit=page_size,
        offset=offset,
        next_offset=next_offset,
    )


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    summary="Get an experiment",
    description="Status, progress, per-run status, timestamps and errors.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
def get_experiment(
    experiment_id: uuid.UUID, session: SessionDependency, principal: PrincipalDependency
) -> ExperimentDetail:
    """One experiment with its runs."""
    experiment, runs = service.experiment_with_runs(session=session, experiment_id=experiment_id, viewer=principal)
    return experiment_detail(experiment, runs)


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentDetail,
    summary="Cancel an experiment",
    description="Queued runs are cancelled at once and never start; running runs stop at their next epoch "
    "boundary and keep the epochs they finished; the experiment ends `cancelled`. Repeating the call is "
    "harmless. An experiment that already ended otherwise (succeeded, failed, partial) answers 409.",
    responses={
        404: {"model": MessageResponse},
        409: {"model": MessageResponse, "description": "The experiment already finished."},
        422: {"model": ValidationErrorResponse},
    },
)
def cancel_experiment(
    experiment_id: uuid.UUID, session: SessionDependency, principal: PrincipalDependency
) -> ExperimentDetail:
    """Request a cancel."""
    experiment, runs = service.cancel_experiment(session=session, experiment_id=experiment_id, viewer=principal)
    return experiment_detail(experiment, runs)
