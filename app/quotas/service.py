"""Rules of the per-owner quotas: caps on active arms and on submissions per minute (429 with Retry-After).

A submission is a new experiment or a seed extension of one (POST /v1/experiments/{id}/seeds);
a retry of failed runs adds active arms but is no submission.

Both are counted in the database, so they hold across any number of API processes. Two
submissions racing at the same instant may both pass the check; the caps are meant to stop
floods and runaway scripts, not to be exact to the last arm.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.config import Settings
from app.models.types import utc_now
from app.quotas import repository
from app.schemas import as_utc
from app.service_errors import InvalidInputError, TooManyRequestsError

SUBMISSION_WINDOW = timedelta(seconds=60)
# Arms free up as runs finish, at a pace the service cannot predict; a minute is a sensible time to look again.
ACTIVE_ARMS_RETRY_SECONDS = 60


@dataclass(frozen=True)
class SubmissionQuotas:
    """The caps in force; 0 means no cap."""

    max_active_arms: int
    max_submissions_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmissionQuotas:
        """The caps of these settings (max_active_arms_per_owner, max_submissions_per_minute)."""
        return cls(
            max_active_arms=settings.max_active_arms_per_owner,
            max_submissions_per_minute=settings.max_submissions_per_minute,
        )


def check_submission_quotas(
    *,
    session: Session,
    owner_id: uuid.UUID | None,
    new_arms: int,
    quotas: SubmissionQuotas,
    now: datetime | None = None,
    request: str = "experiment",
    smaller: str = "split it into smaller experiments",
    location: str = "",
) -> None:
    """TooManyRequestsError (with Retry-After) if a submission of ``new_arms`` arms would break a cap.

    ``request`` names what is asked for in the messages ("experiment", "seed extension"), and
    ``smaller`` says how to ask for fewer arms when the request alone is over the cap (a 422 at ``location``).
    """
    now = now or utc_now()
    if quotas.max_submissions_per_minute > 0:
        recent, oldest = repository.submissions_since(session=session, owner_id=owner_id, since=now - SUBMISSION_WINDOW)
        if recent >= quotas.max_submissions_per_minute:
            oldest_utc = as_utc(oldest) or now
            wait = math.ceil((oldest_utc + SUBMISSION_WINDOW - now).total_seconds())
            retry_after = max(1, min(wait, int(SUBMISSION_WINDOW.total_seconds())))
            raise TooManyRequestsError(
                f"too many submissions: at most {quotas.max_submissions_per_minute} experiments and seed "
                f"extensions per minute per API key (setting ACTLAB_MAX_SUBMISSIONS_PER_MINUTE); try again in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
    if quotas.max_active_arms > 0:
        if new_arms > quotas.max_active_arms:
            # Waiting would never help: this is a bad request, not a busy owner.
            raise InvalidInputError(
                [
                    {
                        "loc": location,
                        "msg": f"the {request} has {new_arms} arms (activations x seeds), more than an API key may "
                        f"have queued or running at once ({quotas.max_active_arms}, setting "
                        f"ACTLAB_MAX_ACTIVE_ARMS_PER_OWNER); {smaller}",
                        "type": "quota_exceeded",
                    }
                ]
            )
        active = repository.count_active_runs(session=session, owner_id=owner_id)
        if active + new_arms > quotas.max_active_arms:
            raise TooManyRequestsError(
                f"too many active arms: this {request} has {new_arms} arms and this API key already has {active} "
                f"queued or running, over the cap of {quotas.max_active_arms} (setting "
                "ACTLAB_MAX_ACTIVE_ARMS_PER_OWNER); wait for runs to finish or cancel some",
                headers={"Retry-After": str(ACTIVE_ARMS_RETRY_SECONDS)},
            )
