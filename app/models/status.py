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

RETRYABLE_RUN_STATUSES = frozenset({RunStatus.failed, RunStatus.timed_out})
"""Ends that POST /v1/experiments/{id}/retry undoes (the worker keeps their checkpoints to resume from).

Diverged is an outcome of the activation (a result), not a failure; succeeded and cancelled are final.
"""
