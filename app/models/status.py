"""Status values of experiments and runs."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Life cycle of one (activation, seed) run."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    diverged = "diverged"
    cancelled = "cancelled"
    timed_out = "timed_out"


class ExperimentStatus(StrEnum):
    """Life cycle of an experiment, derived from its runs."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    partial = "partial"


FINISHED_RUN_STATUSES = frozenset(
    {RunStatus.succeeded, RunStatus.failed, RunStatus.diverged, RunStatus.cancelled, RunStatus.timed_out}
)
