"""Schemas of experiments: the outputs, and the body of a seed extension (the spec itself is app.spec.ExperimentSpec)."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.models import ExperimentStatus, RunStatus
from app.results.plot_kinds import GALLERY_PLOT_KINDS, PLOT_KINDS
from app.schemas import ResponseModel, UtcDateTime
from app.spec import EXAMPLE_SPEC
from app.spec_fields import Seed, StrictModel

_EXAMPLE_ID = "0b5e9f2c-6c1d-4a43-9a57-1f7f6c2d9e11"


class Progress(BaseModel):
    """How far an experiment is."""

    finished_epochs: int = Field(
        description="Epochs trained so far, summed over the runs (the trained-epoch count: a run that ended early adds only the "
        "epochs it trained, so finished_epochs / total_epochs can stay below fraction)."
    )
    total_epochs: int = Field(
        description="Planned epochs: runs x epochs (with a step budget, training.steps, runs x evaluations)."
    )
    fraction: float = Field(
        ge=0.0,
        le=1.0,
        description="Share of the planned epochs that are done or will not run any more "
        "(a run that ended early, by divergence, failure or cancel, counts as settled); 1 when every run ended.",
    )
    runs_total: int
    runs_finished: int
    runs_by_status: dict[RunStatus, int] = Field(description="Number of runs in each status present.")


class ExperimentLinks(BaseModel):
    """Where to go next."""

    self: str
    runs: str
    metrics: str
    layer_metrics: str
    robustness: str = Field(description="The robustness table (spec version 2's evaluation block).")
    cancel: str
    seeds: str = Field(description="POST more seeds here.")
    retry: str = Field(description="POST here to retry the failed and timed-out runs.")
    results: str = Field(description="The results table (statistics per activation).")
    report: str = Field(description="The HTML report.")
    plots: dict[str, str] = Field(description="Each plot kind as SVG (PNG: the same path ending in .png).")


def experiment_links(experiment_id: uuid.UUID) -> ExperimentLinks:
    """The related endpoints of an experiment."""
    base = f"/v1/experiments/{experiment_id}"
    return ExperimentLinks(
        self=base,
        runs=f"{base}/runs",
        metrics=f"{base}/metrics",
        layer_metrics=f"{base}/layer-metrics",
        robustness=f"{base}/robustness",
        cancel=f"{base}/cancel",
        seeds=f"{base}/seeds",
        retry=f"{base}/retry",
        results=f"{base}/results",
        report=f"/experiments/{experiment_id}",
        plots={kind: f"{base}/plots/{kind}.svg" for kind in (*PLOT_KINDS, *GALLERY_PLOT_KINDS)},
    )


class RunSummary(ResponseModel):
    """One arm as listed inside its experiment."""

    id: uuid.UUID
    activation: str = Field(description="The activation label (unique in the experiment).")
    activation_name: str = Field(description="The catalog name.")
    seed: int
    cell: str | None = Field(
        None, description="The run's cell label (hidden=16x32, init=default); null without factors."
    )
    cell_levels: dict[str, Any] | None = Field(
        None, description="The cell's factor levels by spec path; null without factors."
    )
    status: RunStatus
    attempt: int = Field(description="How many times a worker claimed the run.")
    epochs_completed: int
    error: str | None = None
    seed_extension_id: uuid.UUID | None = Field(
        None, description="The seed extension that added this run (see seed_extensions); null: the submission."
    )


class SeedExtensionSummary(ResponseModel):
    """One request that added seeds to the experiment."""

    id: uuid.UUID
    seeds: list[int] = Field(description="The seeds it added, as sent.")
    created_at: UtcDateTime


_EXAMPLE_PROGRESS = {
    "finished_epochs": 40,
    "total_epochs": 180,
    "fraction": 0.2222,
    "runs_total": 18,
    "runs_finished": 2,
    "runs_by_status": {"succeeded": 2, "running": 2, "queued": 14},
}

_EXAMPLE_SUMMARY: dict[str, Any] = {
    "id": _EXAMPLE_ID,
    "name": "classic five on mnist1d",
    "status": "running",
    "spec_hash": "5d0c1b7e0f6a4d8b9b1f3c2e7a9d4f6b0c8e2a1d3f5b7c9e1a2b4c6d8e0f1a3b",
    "device": "auto",
    "queue": "cpu",
    "created_at": "2025-11-27T10:00:00Z",
    "started_at": "2025-11-27T10:00:02Z",
    "finished_at": None,
    "cancel_requested_at": None,
    "progress": _EXAMPLE_PROGRESS,
    "links": {
        "self": f"/v1/experiments/{_EXAMPLE_ID}",
        "runs": f"/v1/experiments/{_EXAMPLE_ID}/runs",
        "metrics": f"/v1/experiments/{_EXAMPLE_ID}/metrics",
        "layer_metrics": f"/v1/experiments/{_EXAMPLE_ID}/layer-metrics",
        "robustness": f"/v1/experiments/{_EXAMPLE_ID}/robustness",
        "cancel": f"/v1/experiments/{_EXAMPLE_ID}/cancel",
        "seeds": f"/v1/experiments/{_EXAMPLE_ID}/seeds",
        "retry": f"/v1/experiments/{_EXAMPLE_ID}/retry",
    },
}


class ExperimentSummary(ResponseModel):
    """An experiment as listed."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_EXAMPLE_SUMMARY]})

    id: uuid.UUID
    name: str
    status: ExperimentStatus
    spec_hash: str = Field(description="SHA-256 of the canonical spec: equal specs hash equal.")
    device: str
    queue: str | None = Field(description="The Celery queue its runs went to (cpu or gpu).")
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    cancel_requested_at: UtcDateTime | None
    progress: Progress
    links: ExperimentLinks


class ExperimentDetail(ExperimentSummary):
    """An experiment with its runs and canonical spec."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    **_EXAMPLE_SUMMARY,
                    "spec_version": 1,
                    "error": None,
                    "spec": EXAMPLE_SPEC,
                    "runs": [
                        {
                            "id": "4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                            "activation": "sigmoid",
                            "activation_name": "sigmoid",
                            "seed": 0,
                            "status": "succeeded",
                            "attempt": 1,
                            "epochs_completed": 10,
                            "error": None,
                            "seed_extension_id": None,
                        }
                    ],
                    "seed_extensions": [],
                }
            ]
        },
    )

    spec_version: int
    error: str | None = Field(description="A summary of what went wrong in failed runs, if any.")
    spec: dict[str, Any] = Field(description="The canonical spec: defaults filled in, aliases kept as sent.")
    runs: list[RunSummary]
    seed_extensions: list[SeedExtensionSummary] = Field(
        default_factory=list, description="The requests that added seeds after the submission, oldest first."
    )


class SeedExtensionRequest(StrictModel):
    """The body of POST /v1/experiments/{id}/seeds."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"seeds": [3, 4]}]})

    seeds: list[Seed] = Field(
        min_length=1,
        description="New seeds (integers >= 0, none the experiment already has); each adds one run per activation.",
    )


class SeedExtensionDetail(ResponseModel):
    """A seed extension: the seeds added, the new runs (one per activation and seed) and the experiment now."""

    id: uuid.UUID = Field(description="The request's id; each new run carries it as seed_extension_id.")
    experiment_id: uuid.UUID
    seeds: list[int]
    created_at: UtcDateTime
    runs: list[RunSummary] = Field(description="The new runs, queued, in grid order.")
    experiment: ExperimentSummary = Field(description="The experiment after the extension (queued or running).")


class RetryDetail(ResponseModel):
    """A retry: the runs put back to queued and the experiment now."""

    runs: list[RunSummary] = Field(description="The requeued runs (they were failed or timed out), in grid order.")
    experiment: ExperimentSummary = Field(description="The experiment after the retry (queued or running).")


class ExperimentPage(BaseModel):
    """One page of experiments, newest first."""

    items: list[ExperimentSummary]
    total: int = Field(description="Experiments matching the filters, over all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page, or null on the last one.")
