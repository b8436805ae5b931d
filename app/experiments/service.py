"""Rules of experiments: submission with idempotency, status derivation, progress and cancel."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.schemas import Principal
from app.auth.service import owner_filter_for
from app.catalog_datasets import DATASETS
from app.config import SpecLimits
from app.errors import validation_error_details
from app.experiments import repository
from app.experiments.schemas import Progress
from app.models import Experiment, ExperimentStatus, Run, RunStatus
from app.models.status import FINISHED_RUN_STATUSES
from app.models.types import utc_now
from app.quotas.service import SubmissionQuotas, check_submission_quotas
from app.runs import repository as runs_repository
from app.runs.repository import RunCounts
from app.schemas import as_utc
from app.service_errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    invalid_query_parameter,
)
from app.spec import ExperimentSpec
from app.spec_factors import arm_count, cell_columns, expand_cells, planned_evaluations

logger = logging.getLogger(__name__)

FINISHED_EXPERIMENT_STATUSES = frozenset(
    {ExperimentStatus.succeeded, ExperimentStatus.failed, ExperimentStatus.cancelled, ExperimentStatus.partial}
)
_FINISHED_RUN_VALUES = frozenset(str(status) for status in FINISHED_RUN_STATUSES)


class Dispatcher(Protocol):
    """Where runs go: the queue for a device, and sending run ids to it (app.dispatch in production)."""

    def choose_queue(self, *, session: Session, device: str) -> str:
        """The queue ('cpu' or 'gpu') for the spec's device."""
        ...

    def enqueue_runs(self, *, run_ids: list[uuid.UUID], queue: str) -> None:
        """Send one task per run id; called only after the runs are committed."""
        ...


@dataclass(frozen=True)
class Submission:
    """The outcome of a POST: the experiment and whether this request created it."""

    experiment: Experiment
    runs: list[Run]
    created: bool


def _nul_locations(payload: Any) -> list[str]:
    """Dotted paths of strings (keys included) holding NUL, which PostgreSQL cannot store in text or JSONB."""
    found: list[str] = []
    # An explicit stack, not recursion: JSON nested nearly as deep as the parser allows must not overflow here.
    pending: list[tuple[Any, tuple[str, ...]]] = [(payload, ())]
    while pending:
        value, location = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append(".".join(location))
        elif isinstance(value, dict):
            for key, item in value.items():
                path = (*location, str(key).replace("\x00", "\\u0000"))
                if "\x00" in str(key):
                    found.append(".".join(path))
                pending.append((item, path))
        elif isinstance(value, list):
            pending.extend((item, (*location, str(index))) for index, item in enumerate(value))
    return sorted(found)


# Fields of an experiment or run that the service sets; a client sending one gets a 422 that says so.
SERVER_OWNED_FIELDS = frozenset(
    {
        "id",
        "owner",
        "owner_id",
        "status",
        "attempt",
        "attempts",
        "progress",
        "runs",
        "spec_hash",
        "queue",
        "error",
        "created_at",
        "enqueued_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
        "cancel_requested_at",
        "seed_extensions",
        "seed_extension_id",
    }
) - frozenset(ExperimentSpec.model_fields)


def _explain_server_owned(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    explained = []
    for error in errors:
        if error.get("type") == "extra_forbidden" and error.get("loc") in SERVER_OWNED_FIELDS:
            error = {
                "loc": error["loc"],
                "msg": f"'{error['loc']}' is set by the service and may not be sent; remove it from the spec",
                "type": "server_owned_field",
            }
        explained.append(error)
    return explained


def parse_spec(*, payload: Any, limits: SpecLimits) -> ExperimentSpec:
    """Validate a submitted spec against the limits in force; raise InvalidInputError naming each bad field."""
    nul_errors = [
        {"loc": location, "msg": "text may not contain the NUL character (\\u0000)", "type": "string_nul"}
        for location in _nul_locations(payload)
    ]
    if nul_errors:
        raise InvalidInputError(nul_errors)
    try:
        return ExperimentSpec.model_validate(payload, context={"limits": limits})
    except ValidationError as error:
        raise InvalidInputError(_explain_server_owned(validation_error_details(error))) from None


def derive_experiment_status(*, run_statuses: list[str], cancel_requested: bool) -> ExperimentStatus:
    """The experiment status implied by its runs' statuses.

    queued while every run is queued; running while some run is running or some but not all
    runs finished; once every run finished: succeeded if all succeeded, else cancelled if a
    cancel was requested, else failed if none succeeded, else partial.
    """
    if not run_statuses:
        return ExperimentStatus.queued
    finished = [status for status in run_statuses if status in _FINISHED_RUN_VALUES]
    if len(finished) < len(run_statuses):
        if all(status == RunStatus.queued for status in run_statuses):
            return ExperimentStatus.queued
        return ExperimentStatus.running
    succeeded = sum(1 for status in run_statuses if status == RunStatus.succeeded)
    if succeeded == len(run_statuses):
        return ExperimentStatus.succeeded
    if cancel_requested:
        return ExperimentStatus.cancelled
    if succeeded == 0:
        return ExperimentStatus.failed
    return ExperimentStatus.partial


def _failure_summary(runs: Iterable[Run]) -> str | None:
    unsuccessful = [run for run in runs if run.status in (RunStatus.failed, RunStatus.diverged, RunStatus.timed_out)]
    if not unsuccessful:
        return None
    counts = Counter(str(run.status) for run in unsuccessful)
    summary = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    first_error = next((run for run in unsuccessful if run.error), None)
    if first_error is not None:
        summary += f"; first error ({first_error.activation_label}, seed {first_error.seed}): {first_error.error}"
    return summary


def refresh_experiment_status(*, session: Session, experiment_id: uuid.UUID) -> Experiment:
    """Recompute an experiment's status, started_at, finished_at and error from its runs (no commit).

    Locks the experiment row first (PostgreSQL), so two workers finishing the last runs at once
    cannot both read a stale picture; call it in the same transaction as the run change.
    """
    experiment = repository.get_experiment(session=session, experiment_id=experiment_id, for_update=True)
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    runs = runs_repository.list_runs_of_experiment(session=session, experiment_id=experiment_id, refresh=True)
    status = derive_experiment_status(
        run_statuses=[str(run.status) for run in runs], cancel_requested=experiment.cancel_requested_at is not None
    )
    experiment.status = status
    started = [as_utc(run.started_at) for run in runs if run.started_at is not None]
    if started and experiment.started_at is None:
        experiment.started_at = min(moment for moment in started if moment is not None)
    if status in FINISHED_EXPERIMENT_STATUSES:
        ended = [as_utc(run.finished_at) for run in runs if run.finished_at is not None]
        if experiment.finished_at is None:
            experiment.finished_at = max((moment for moment in ended if moment is not None), default=utc_now())
    else:
        experiment.finished_at = None
    experiment.error = _failure_summary(runs)
    # The runs changed (their end, new seeds, a retry): cached results of the experiment are stale.
    repository.bump_results_version(session=session, experiment_id=experiment_id)
    session.flush()
    return experiment


def progress_from_counts(*, counts: RunCounts, total_epochs: int) -> Progress:
    """Progress of an experiment from its run counts per status."""
    runs_total = sum(counts.runs_by_status.values())
    epochs_per_run = total_epochs // runs_total if runs_total else 0
    finished_epochs = sum(counts.epochs_completed_by_status.values())
    runs_finished = sum(count for status, count in counts.runs_by_status.items() if status in _FINISHED_RUN_VALUES)
    unfinished_epochs = sum(
        epochs for status, epochs in counts.epochs_completed_by_status.items() if status not in _FINISHED_RUN_VALUES
    )
    settled = runs_finished * epochs_per_run + unfinished_epochs
    fraction = min(1.0, settled / total_epochs) if total_epochs else 0.0
    return Progress(
        finished_epochs=finished_epochs,
        total_epochs=total_epochs,
        fraction=round(fraction, 4),
        runs_total=runs_total,
        runs_finished=runs_finished,
        runs_by_status={RunStatus(status): count for status, count in counts.runs_by_status.items()},
    )


def counts_of_runs(runs: Iterable[Run]) -> RunCounts:
    """Run counts per status computed from loaded runs."""
    counts = RunCounts({}, {})
    for run in runs:
        status = str(run.status)
        counts.runs_by_status[status] = counts.runs_by_status.get(status, 0) + 1
        counts.epochs_completed_by_status[status] = (
            counts.epochs_completed_by_status.get(status, 0) + run.epochs_completed
        )
    return counts


def _build_rows(
    *, spec: ExperimentSpec, payload: Any, queue: str, idempotency_key: str | None, owner_id: uuid.UUID | None
) -> tuple[Experiment, list[Run]]:
    now = utc_now()
    arms = spec.arms()
    cells = expand_cells(spec)
    experiment = Experiment(
        id=uuid.uuid4(),
        name=spec.name,
        status=ExperimentStatus.queued,
        spec=spec.model_dump(mode="json"),
        submitted_spec=payload,
        spec_hash=spec.spec_hash(),
        spec_version=spec.version,
        device=spec.device,
        queue=queue,
        total_epochs=planned_evaluations(spec, cells),
        idempotency_key=idempotency_key,
        owner_id=owner_id,
        created_at=now,
    )
    runs = [
        Run(
            id=uuid.uuid4(),
            experiment_id=experiment.id,
            activation_index=arm.activation_index,
            activation_label=arm.label,
            activation_name=spec.activations[arm.activation_index].canonical_name,
            seed=arm.seed,
            status=RunStatus.queued,
            attempt=0,
            queue=queue,
            epochs_completed=0,
            created_at=now,
            **cell_columns(cell),
        )
        for cell in cells
        for arm in arms
    ]
    return experiment, runs


def enqueue_committed(
    *,
    session: Session,
    dispatcher: Dispatcher,
    experiment: Experiment,
    run_ids: list[uuid.UUID],
    retry_hint: str | None = None,
) -> None:
    """Send committed runs to the broker and record when it accepted them; UnavailableError if it refused.

    ``retry_hint`` ends the 503's message (default: what a submission should do).
    """
    if not run_ids:
        return
    queue = experiment.queue or "cpu"
    try:
        dispatcher.enqueue_runs(run_ids=run_ids, queue=queue)
    except Exception as error:
        logger.exception("could not enqueue runs of experiment %s", experiment.id)
        if retry_hint is None:
            retry_hint = (
                "retry the request with the same Idempotency-Key to queue them"
                if experiment.idempotency_key
                else "they stay queued until they are sent again"
            )
        raise UnavailableError(
            f"experiment {experiment.id} was stored but the broker did not accept its runs "
            f"({type(error).__name__}: {error}); {retry_hint}",
            headers={"Retry-After": "5"},
        ) from error
    repository.mark_runs_enqueued(session=session, run_ids=run_ids, now=utc_now())
    session.commit()


def _replay(
    *, session: Session, dispatcher: Dispatcher, existing: Experiment, spec: ExperimentSpec, key: str
) -> Submission:
    if existing.spec_hash != spec.spec_hash():
        raise ConflictError(
            f"Idempotency-Key {key!r} was already used for experiment {existing.id} with a different spec; "
            "use a new key for a new experiment"
        )
    # A first attempt that died between commit and enqueue left runs that were never sent: send them now.
    pending = repository.queued_runs_never_enqueued(session=session, experiment_id=existing.id)
    enqueue_committed(session=session, dispatcher=dispatcher, experiment=existing, run_ids=pending)
    runs = runs_repository.list_runs_of_experiment(session=session, experiment_id=existing.id)
    return Submission(experiment=existing, runs=runs, created=False)


def submit_experiment(
    *,
    session: Session,
    dispatcher: Dispatcher,
    payload: Any,
    limits: SpecLimits,
    idempotency_key: str | None = None,
    owner_id: uuid.UUID | None = None,
    quotas: SubmissionQuotas | None = None,
) -> Submission:
    """Validate a spec, store the experiment and one run per arm in one transaction, then enqueue the runs.

    With an Idempotency-Key, a repeated submission returns the experiment of the first one
    (and a different spec under the same key is a conflict); keys are per owner. A new
    submission over one of the owner's ``quotas`` is refused (TooManyRequestsError); a
    replay is not a new submission and never counts. Nothing is stored when validation fails.
    """
    spec = parse_spec(payload=payload, limits=limits)
    if idempotency_key is not None:
        existing = repository.find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
        if existing is not None:
            return _replay(session=session, dispatcher=dispatcher, existing=existing, spec=spec, key=idempotency_key)
    if quotas is not None:
        check_submission_quotas(session=session, owner_id=owner_id, new_arms=arm_count(spec), quotas=quotas)
    queue = dispatcher.choose_queue(session=session, device=spec.device)
    experiment, runs = _build_rows(
        spec=spec, payload=payload, queue=queue, idempotency_key=idempotency_key, owner_id=owner_id
    )
    try:
        repository.add_experiment(session=session, experiment=experiment, runs=runs)
        session.commit()
    except IntegrityError:
        session.rollback()
        # Two requests with the same key raced; the unique index let exactly one of them in.
        if idempotency_key is not None:
            existing = repository.find_by_idempotency_key(session=session, owner_id=owner_id, key=idempotency_key)
            if existing is not None:
                return _replay(
                    session=session, dispatcher=dispatcher, existing=existing, spec=spec, key=idempotency_key
                )
        raise
    logger.info(
        "experiment submitted with %d runs on queue %s",
        len(runs),
        queue,
        extra={"experiment_id": str(experiment.id), "owner_id": str(owner_id) if owner_id else None},
    )
    enqueue_committed(session=session, dispatcher=dispatcher, experiment=experiment, run_ids=[run.id for run in runs])
    return Submission(experiment=experiment, runs=runs, created=True)


def require_experiment(*, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None) -> Experiment:
    """The experiment if ``viewer`` may see it, else NotFoundError.

    ``viewer`` defaults to the caller of the current request, so every router that looks an
    experiment up gets the owner check; another owner's experiment is "not found", never
    "forbidden", so ids of others' work are not confirmed. Outside a request (workers) there is no filter.
    """
    experiment = repository.get_experiment(
        session=session, experiment_id=experiment_id, owner_id=owner_filter_for(viewer)
    )
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    return experiment


def require_visible(*, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None) -> None:
    """NotFoundError unless ``viewer`` may see the experiment (require_experiment's check, without loading it)."""
    if not repository.experiment_exists(
        session=session, experiment_id=experiment_id, owner_id=owner_filter_for(viewer)
    ):
        raise NotFoundError(f"experiment {experiment_id} not found")


def experiment_with_runs(
    *, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None
) -> tuple[Experiment, list[Run]]:
    """The experiment and its runs in grid order, or NotFoundError (another owner's experiment included)."""
    experiment = require_experiment(session=session, experiment_id=experiment_id, viewer=viewer)
    runs = runs_repository.list_runs_of_experiment(session=session, experiment_id=experiment_id)
    return experiment, runs


@dataclass(frozen=True)
class ExperimentListing:
    """A page of experiments with their run counts."""

    experiments: list[Experiment]
    counts: Mapping[uuid.UUID, RunCounts]
    total: int


def list_experiments(
    *,
    session: Session,
    statuses: list[ExperimentStatus],
    name_contains: str | None,
    limit: int,
    offset: int,
    page_size_limit: int,
    viewer: Principal | None = None,
    dataset: str | None = None,
) -> ExperimentListing:
    """A page of the experiments ``viewer`` (default: the current caller) may see, newest first, filtered by status,
    name and dataset (a catalog name: the spec's dataset or any level of a ``dataset.name`` factor)."""
    if dataset is not None and dataset not in DATASETS:
        raise invalid_query_parameter("dataset", f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if limit > page_size_limit:
        raise InvalidInputError(
            [
                {
                    "loc": "query.limit",
                    "msg": f"Input should be less than or equal to {page_size_limit} (setting ACTLAB_PAGE_SIZE_LIMIT)",
                    "type": "less_than_equal",
                }
            ]
        )
    experiments, total = repository.list_experiments(
        session=session,
        statuses=[str(status) for status in statuses],
        name_contains=name_contains,
        limit=limit,
        offset=offset,
        owner_id=owner_filter_for(viewer),
        dataset=dataset,
    )
    counts = runs_repository.count_runs_by_experiment(
        session=session, experiment_ids=[experiment.id for experiment in experiments]
    )
    return ExperimentListing(experiments=experiments, counts=counts, total=total)


def cancel_experiment(
    *, session: Session, experiment_id: uuid.UUID, viewer: Principal | None = None
) -> tuple[Experiment, list[Run]]:
    """Request a cancel: queued runs become cancelled now, running ones stop at their next epoch boundary.

    Idempotent: cancelling an already cancelled (or cancelling) experiment changes nothing.
    An experiment that already ended otherwise (succeeded, failed, partial) is a conflict.
    """
    experiment = repository.get_experiment(
        session=session, experiment_id=experiment_id, for_update=True, owner_id=owner_filter_for(viewer)
    )
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    if experiment.status in FINISHED_EXPERIMENT_STATUSES and experiment.status != ExperimentStatus.cancelled:
        raise ConflictError(
            f"experiment {experiment_id} already finished with status '{experiment.status}'; there is nothing to cancel"
        )
    now: datetime = utc_now()
    if experiment.cancel_requested_at is None:
        experiment.cancel_requested_at = now
    repository.cancel_queued_runs(session=session, experiment_id=experiment_id, now=now)
    refresh_experiment_status(session=session, experiment_id=experiment_id)
    session.commit()
    return experiment_with_runs(session=session, experiment_id=experiment_id, viewer=viewer)
