"""HTTP endpoints of experiments: submit, list, get, cancel, add seeds, retry failed runs."""

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
    SessionFactoryDependency,
    SettingsDependency,
)
from app.dispatch import max_attempts_per_run
from app.experiments import detail, follow_up, service
from app.experiments.schemas import (
    ExperimentDetail,
    ExperimentPage,
    ExperimentSummary,
    RetryDetail,
    RunSummary,
    SeedExtensionDetail,
    SeedExtensionRequest,
    SeedExtensionSummary,
    experiment_links,
)
from app.models import Experiment, ExperimentStatus, Run, SeedExtension
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


def _run_summary(run: Run) -> RunSummary:
    return RunSummary(
        id=run.id,
        activation=run.activation_label,
        activation_name=run.activation_name,
        seed=run.seed,
        cell=run.cell_label,
        cell_levels=run.cell_levels,
        status=run.status,
        attempt=run.attempt,
        epochs_completed=run.epochs_completed,
        error=run.error,
        seed_extension_id=run.seed_extension_id,
    )


def experiment_detail(
    experiment: Experiment, runs: Sequence[Run], extensions: Sequence[SeedExtension] = ()
) -> ExperimentDetail:
    """The API view of an experiment with its runs (and the requests that added seeds)."""
    summary = _experiment_summary(experiment, service.counts_of_runs(runs))
    return ExperimentDetail(
        **summary.model_dump(),
        spec_version=experiment.spec_version,
        error=experiment.error,
        spec=experiment.spec,
        runs=[_run_summary(run) for run in runs],
        seed_extensions=[
            SeedExtensionSummary(id=extension.id, seeds=list(extension.seeds), created_at=extension.created_at)
            for extension in extensions
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
    description="Newest first; filter by one or more statuses, by a case-insensitive name substring and by "
    "dataset (a level of a dataset.name factor, else the spec's). "
    "Lists the experiments of the calling API key (an admin key sees every owner's).",
    responses={422: {"model": ValidationErrorResponse}},
)
def list_experiments(
    session: SessionDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
    status: Annotated[list[ExperimentStatus] | None, Query(description="Keep these statuses (repeatable).")] = None,
    name: Annotated[NoNulText | None, Query(max_length=200, description="Part of the name, any case.")] = None,
    dataset: Annotated[
        str | None,
        Query(
            max_length=64,
            description="Keep experiments on this catalog dataset: any level of a dataset.name factor, else "
            "the spec's dataset.",
        ),
    ] = None,
    limit: Annotated[int | None, Query(ge=1, description="Page size (default 50, at most page_size_limit).")] = None,
    offset: Annotated[int, Query(ge=0, le=2_000_000_000, description="Experiments to skip.")] = 0,
) -> ExperimentPage:
    """A page of experiments."""
    page_size = limit if limit is not None else min(50, settings.page_size_limit)
    listing = service.list_experiments(
        session=session,
        statuses=status or [],
        name_contains=name,
        dataset=dataset,
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
    description="Status, progress, per-run status, timestamps and errors; `seed_extensions` lists the requests "
    "that added seeds (POST /v1/experiments/{id}/seeds), and each run's `seed_extension_id` names its own.",
    responses={404: {"model": MessageResponse}, 422: {"model": ValidationErrorResponse}},
)
async def get_experiment(
    experiment_id: uuid.UUID, session_factory: SessionFactoryDependency, principal: PrincipalDependency
) -> Response:
    """One experiment with its runs (ExperimentDetail, encoded once by app.experiments.detail), read and encoded in
    one worker-thread call on a session of its own (no per-request session dependency: it is polled)."""
    content = await run_in_threadpool(detail.experiment_detail_bytes, session_factory, experiment_id, principal)
    return Response(content, media_type="application/json")


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
    return experiment_detail(
        experiment, runs, follow_up.seed_extensions_of(session=session, experiment_id=experiment_id)
    )


_FOLLOW_UP_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": MessageResponse, "description": "No such experiment, or another API key's."},
    429: {
        "model": MessageResponse,
        "description": "Over a quota of this API key; the Retry-After header says when to try again.",
        "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    },
    503: {
        "model": MessageResponse,
        "description": "Stored, but the broker did not accept the runs; they stay queued and the maintenance "
        "pass (actlab maintain) sends them.",
    },
}


@router.post(
    "/{experiment_id}/seeds",
    status_code=202,
    response_model=SeedExtensionDetail,
    response_description="The request: the seeds added, the new queued runs and the experiment now.",
    summary="Add seeds to an experiment",
    description="Adds one run per activation for each new seed, seed-paired with the runs already there, to a "
    "queued, running or finished experiment, and queues them; the results then pair and summarise over every "
    "seed. The experiment keeps its id and `spec_hash` (the hash of the spec as submitted); its stored `spec` "
    "lists every seed; each new run names the request in `seed_extension_id`, and GET /v1/experiments/{id} "
    "lists the requests in `seed_extensions`. The status goes back to queued or running until the new runs "
    "end. A seed the experiment already has, or a seed sent twice, is a 422 at `seeds`; so is an extended "
    "experiment over a spec limit (ACTLAB_MAX_SEEDS, ACTLAB_MAX_ARMS, ACTLAB_MAX_COST). The request counts "
    "as a submission for the per-minute quota, and its new arms for the active-arms quota.",
    responses={
        **_FOLLOW_UP_ERRORS,
        409: {"model": MessageResponse, "description": "The experiment was cancelled."},
        422: {
            "model": ValidationErrorResponse,
            "description": "Bad seeds: not integers >= 0, repeated, already in the experiment (named), or over a limit.",
        },
    },
)
def add_seeds(
    experiment_id: uuid.UUID,
    body: SeedExtensionRequest,
    response: Response,
    session: SessionDependency,
    dispatcher: DispatcherDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
) -> SeedExtensionDetail:
    """Add seeds to an experiment."""
    outcome = follow_up.extend_seeds(
        session=session,
        dispatcher=dispatcher,
        experiment_id=experiment_id,
        seeds=body.seeds,
        limits=settings,
        quotas=SubmissionQuotas.from_settings(settings),
        viewer=principal,
    )
    response.headers["Location"] = f"/v1/experiments/{experiment_id}"
    extension = outcome.extension
    return SeedExtensionDetail(
        id=extension.id,
        experiment_id=experiment_id,
        seeds=list(extension.seeds),
        created_at=extension.created_at,
        runs=[_run_summary(run) for run in sorted(outcome.runs, key=lambda run: (run.activation_index, run.seed))],
        experiment=_experiment_summary(outcome.experiment, service.counts_of_runs(outcome.experiment_runs)),
    )


@router.post(
    "/{experiment_id}/retry",
    status_code=202,
    response_model=RetryDetail,
    response_description="The requeued runs and the experiment now.",
    summary="Retry the failed runs of an experiment",
    description="Puts the experiment's failed and timed-out runs back to queued and queues them; each resumes "
    "from its last checkpoint (epochs trained again overwrite their metric rows, never duplicate them). "
    "Diverged runs are results of the activation and stay, as do succeeded ones. A run may be started "
    "ACTLAB_TASK_MAX_RETRIES + 1 times in all, retries included; one that used every attempt stays failed. "
    "The status goes back to queued or running until the runs end. The requeued runs count against the "
    "active-arms quota; a retry is not a submission.",
    responses={
        **_FOLLOW_UP_ERRORS,
        409: {
            "model": MessageResponse,
            "description": "The experiment was cancelled, or it has no failed or timed-out run with attempts left.",
        },
        422: {"model": ValidationErrorResponse, "description": "The experiment id is not a UUID."},
    },
)
def retry_experiment(
    experiment_id: uuid.UUID,
    session: SessionDependency,
    dispatcher: DispatcherDependency,
    settings: SettingsDependency,
    principal: PrincipalDependency,
) -> RetryDetail:
    """Retry the failed and timed-out runs."""
    outcome = follow_up.retry_runs(
        session=session,
        dispatcher=dispatcher,
        experiment_id=experiment_id,
        max_attempts=max_attempts_per_run(settings),
        quotas=SubmissionQuotas.from_settings(settings),
        viewer=principal,
    )
    return RetryDetail(
        runs=[_run_summary(run) for run in outcome.runs],
        experiment=_experiment_summary(outcome.experiment, service.counts_of_runs(outcome.experiment_runs)),
    )
