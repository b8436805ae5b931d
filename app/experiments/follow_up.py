"""Following an experiment up without resubmitting it: more seeds, and a retry of the runs that failed.

``extend_seeds`` (POST /v1/experiments/{id}/seeds) adds one run per activation for each new seed,
seed-paired with the runs already there; the experiment keeps its id and spec hash (the hash of
the spec as submitted), its stored spec lists every seed, and a seed_extensions row records the
request, which each new run names. ``retry_runs`` (POST /v1/experiments/{id}/retry) puts the
failed and timed-out runs back to queued; the worker resumes each from its checkpoint. Diverged
runs are results, not failures, and stay. Both commit before they enqueue (like a submission), and
refresh the experiment's status, which goes back to queued or running until the new runs end.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.schemas import Principal
from app.auth.service import owner_filter_for
from app.config import SpecLimits
from app.errors import validation_error_details
from app.experiments import repository
from app.experiments.service import Dispatcher, enqueue_committed, refresh_experiment_status
from app.models import Experiment, Run, RunStatus, SeedExtension
from app.models.status import RETRYABLE_RUN_STATUSES
from app.models.types import utc_now
from app.quotas.service import SubmissionQuotas, check_submission_quotas
from app.runs import repository as runs_repository
from app.service_errors import ConflictError, InvalidInputError, NotFoundError
from app.spec import ExperimentSpec
from app.spec_factors import cell_columns, expand_cells, planned_evaluations

logger = logging.getLogger(__name__)

_LATER = "they stay queued and are sent again by the service's maintenance pass (actlab maintain)"


@dataclass(frozen=True)
class SeedExtensionOutcome:
    """The request that added seeds, the runs it created and the experiment afterwards."""

    extension: SeedExtension
    runs: list[Run]
    experiment: Experiment
    experiment_runs: list[Run]


@dataclass(frozen=True)
class RetryOutcome:
    """The runs a retry put back to queued and the experiment afterwards."""

    runs: list[Run]
    experiment: Experiment
    experiment_runs: list[Run]


def _lock_open_experiment(
    *, session: Session, experiment_id: uuid.UUID, viewer: Principal | None, action: str
) -> Experiment:
    """The experiment, its row locked, if ``viewer`` may see it (else NotFoundError) and it is not cancelled (else 409)."""
    experiment = repository.get_experiment(
        session=session, experiment_id=experiment_id, for_update=True, owner_id=owner_filter_for(viewer)
    )
    if experiment is None:
        raise NotFoundError(f"experiment {experiment_id} not found")
    if experiment.cancel_requested_at is not None:
        raise ConflictError(
            f"experiment {experiment_id} was cancelled; {action} a cancelled experiment is not possible"
        )
    return experiment


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(str(seed) for seed in seeds)


def _check_new_seeds(*, seeds: Sequence[int], existing: Sequence[int]) -> None:
    """InvalidInputError at ``seeds`` for a seed sent twice or one the experiment already has."""
    repeated = sorted(seed for seed, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise InvalidInputError(
            [
                {
                    "loc": "seeds",
                    "msg": f"seeds must be unique; sent more than once: {_seed_list(repeated)}",
                    "type": "value_error",
                }
            ]
        )
    known = sorted(set(seeds) & set(existing))
    if known:
        raise InvalidInputError(
            [
                {
                    "loc": "seeds",
                    "msg": f"the experiment already has seed(s) {_seed_list(known)}; send only new seeds "
                    f"(it has {_seed_list(existing)})",
                    "type": "seed_exists",
                }
            ]
        )


def _extended_spec(*, spec: dict[str, Any], seeds: Sequence[int], limits: SpecLimits) -> ExperimentSpec:
    """The stored spec with ``seeds`` appended, validated under the limits in force; errors are put at ``seeds``."""
    existing = list(spec["seeds"])
    try:
        return ExperimentSpec.model_validate({**spec, "seeds": [*existing, *seeds]}, context={"limits": limits})
    except ValidationError as error:
        errors = []
        for detail in validation_error_details(error, model=ExperimentSpec):
            location, message = detail["loc"], detail["msg"]
            parts = location.split(".")
            if parts[0] == "seeds" and len(parts) == 2 and parts[1].isdigit():
                # An index into the combined list: point at the request's own item.
                location = f"seeds.{int(parts[1]) - len(existing)}"
            elif location != "seeds":
                # A bound of the whole experiment (arms, cost) or of the stored spec under today's limits.
                message = (
                    f"with these seeds the experiment breaks a limit: {location + ': ' if location else ''}{message}"
                )
                location = "seeds"
            errors.append({"loc": location, "msg": message, "type": detail["type"]})
        raise InvalidInputError(errors) from None


def extend_seeds(
    *,
    session: Session,
    dispatcher: Dispatcher,
    experiment_id: uuid.UUID,
    seeds: Sequence[int],
    limits: SpecLimits,
    quotas: SubmissionQuotas | None = None,
    viewer: Principal | None = None,
) -> SeedExtensionOutcome:
    """Add ``seeds`` to a finished or running experiment: one new run per activation and seed, then enqueue them.

    NotFoundError for an experiment ``viewer`` may not see; ConflictError when it was cancelled;
    InvalidInputError (at ``seeds``) for a seed it already has, a repeated seed, or an extended
    spec over a limit (ACTLAB_MAX_SEEDS, ACTLAB_MAX_ARMS, ACTLAB_MAX_COST...); the owner's quotas
    count the request as a submission of its new arms. Nothing is stored when it is refused.
    """
    experiment = _lock_open_experiment(session=session, experiment_id=experiment_id, viewer=viewer, action="extending")
    existing = [int(seed) for seed in experiment.spec["seeds"]]
    _check_new_seeds(seeds=seeds, existing=existing)
    spec = _extended_spec(spec=experiment.spec, seeds=seeds, limits=limits)
    activations = spec.activations
    cells = expand_cells(spec)
    if quotas is not None:
        check_submission_quotas(
            session=session,
            owner_id=experiment.owner_id,
            new_arms=len(cells) * len(activations) * len(seeds),
            quotas=quotas,
            request="seed extension",
            smaller="add fewer seeds at a time",
            location="seeds",
        )
    now = utc_now()
    extension = SeedExtension(id=uuid.uuid4(), experiment_id=experiment.id, seeds=list(seeds), created_at=now)
    # The same queue as the runs already there: paired runs train on the same kind of device.
    queue = experiment.queue or "cpu"
    runs = [
        Run(
            id=uuid.uuid4(),
            experiment_id=experiment.id,
            activation_index=index,
            activation_label=activation.display_label,
            activation_name=activation.canonical_name,
            seed=seed,
            status=RunStatus.queued,
            attempt=0,
            queue=queue,
            epochs_completed=0,
            created_at=now,
            seed_extension_id=extension.id,
            **cell_columns(cell),
        )
        for cell in cells
        for index, activation in enumerate(activations)
        for seed in seeds
    ]
    # The spec hash stays the submitted spec's: the experiment is still the one that was asked for.
    experiment.spec = spec.model_dump(mode="json")
    experiment.total_epochs = planned_evaluations(spec, cells)
    try:
        repository.add_seed_extension(session=session, extension=extension, runs=runs)
        refresh_experiment_status(session=session, experiment_id=experiment.id)
        session.commit()
    except IntegrityError:
        # SQLite has no row lock: a concurrent request added one of these seeds first.
        session.rollback()
        raise ConflictError(
            f"another request added seeds to experiment {experiment_id} at the same time; "
            "read the experiment and send the seeds it still lacks"
        ) from None
    logger.info(
        "experiment extended by seeds %s: %d new runs on queue %s",
        _seed_list(seeds),
        len(runs),
        queue,
        extra={"experiment_id": str(experiment.id), "seed_extension_id": str(extension.id)},
    )
    enqueue_committed(
        session=session,
        dispatcher=dispatcher,
        experiment=experiment,
        run_ids=[run.id for run in runs],
        retry_hint=_LATER,
    )
    return SeedExtensionOutcome(
        extension=extension,
        runs=runs,
        experiment=experiment,
        experiment_runs=runs_repository.list_runs_of_experiment(session=session, experiment_id=experiment.id),
    )


def retry_runs(
    *,
    session: Session,
    dispatcher: Dispatcher,
    experiment_id: uuid.UUID,
    max_attempts: int,
    quotas: SubmissionQuotas | None = None,
    viewer: Principal | None = None,
) -> RetryOutcome:
    """Put the experiment's failed and timed-out runs back to queued, then enqueue them; each resumes from its checkpoint.

    A run may be started ``max_attempts`` times in all, retries included (ACTLAB_TASK_MAX_RETRIES + 1):
    a run that used them all stays failed. ConflictError when the experiment was cancelled or has
    nothing to retry; the owner's cap on active arms applies (a retry is no new submission).
    """
    experiment = _lock_open_experiment(session=session, experiment_id=experiment_id, viewer=viewer, action="retrying")
    runs = runs_repository.list_runs_of_experiment(session=session, experiment_id=experiment.id)
    unfinished = [run for run in runs if run.status in RETRYABLE_RUN_STATUSES]
    retryable = [run for run in unfinished if run.attempt < max_attempts]
    if not retryable:
        exhausted = (
            f"; {len(unfinished)} failed or timed-out run(s) already used all {max_attempts} attempts "
            "(setting ACTLAB_TASK_MAX_RETRIES)"
            if unfinished
            else ""
        )
        raise ConflictError(
            f"experiment {experiment_id} has no failed or timed-out run to retry{exhausted} "
            "(diverged runs are results and are not retried)"
        )
    if quotas is not None:
        check_submission_quotas(
            session=session,
            owner_id=experiment.owner_id,
            new_arms=len(retryable),
            quotas=dataclasses.replace(quotas, max_submissions_per_minute=0),
            request="retry",
            smaller="cancel or wait for other runs first",
        )
    requeued = set(
        repository.requeue_runs(
            session=session,
            run_ids=[run.id for run in retryable],
            from_statuses=sorted(str(status) for status in RETRYABLE_RUN_STATUSES),
        )
    )
    refresh_experiment_status(session=session, experiment_id=experiment.id)
    session.commit()
    logger.info("experiment retried: %d runs requeued", len(requeued), extra={"experiment_id": str(experiment.id)})
    run_ids = [run.id for run in retryable if run.id in requeued]
    enqueue_committed(session=session, dispatcher=dispatcher, experiment=experiment, run_ids=run_ids, retry_hint=_LATER)
    experiment_runs = runs_repository.list_runs_of_experiment(
        session=session, experiment_id=experiment.id, refresh=True
    )
    return RetryOutcome(
        runs=[run for run in experiment_runs if run.id in requeued],
        experiment=experiment,
        experiment_runs=experiment_runs,
    )


def seed_extensions_of(*, session: Session, experiment_id: uuid.UUID) -> list[SeedExtension]:
    """The seed-extension requests of an experiment, oldest first."""
    return repository.list_seed_extensions(session=session, experiment_id=experiment_id)
