"""Output schemas of runs."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.models import RunStatus
from app.schemas import UtcDateTime


class RunTimings(BaseModel):
    """When things happened to a run, and how long it trained."""

    created_at: UtcDateTime
    enqueued_at: UtcDateTime | None = Field(description="When the broker accepted its task.")
    started_at: UtcDateTime | None
    heartbeat_at: UtcDateTime | None = Field(description="The worker's last sign of life (every epoch).")
    finished_at: UtcDateTime | None
    training_seconds: float | None = Field(description="Seconds spent training, excluding data loading.")


class RunLinks(BaseModel):
    """Related endpoints."""

    self: str
    experiment: str
    metrics: str
    layer_metrics: str


class RunDetail(BaseModel):
    """One (activation, seed) arm: status, placement and timings."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                    "experiment_id": "0b5e9f2c-6c1d-4a43-9a57-1f7f6c2d9e11",
                    "activation": "relu",
                    "activation_name": "relu",
                    "activation_index": 2,
                    "seed": 0,
                    "status": "succeeded",
                    "attempt": 1,
                    "queue": "cpu",
                    "device": "cpu",
                    "worker_host": "worker-1",
                    "init_scheme": "kaiming_normal(relu)",
                    "parameter_count": 22154,
                    "activation_placement": "after_linear",
                    "training_path": "unstacked",
                    "time_gradients": None,
                    "stack_id": None,
                    "stack_size": None,
                    "stacking_reason": "stacking not recommended: on a CPU convolutions are bound by memory traffic, "
                    "which stacking does not reduce, and the grouped layout adds copies: stacked conv grids measured "
                    "no faster than sequential runs",
                    "epochs_planned": 10,
                    "epochs_completed": 10,
                    "diverged_epoch": None,
                    "timings": {
                        "created_at": "2025-11-27T10:00:00Z",
                        "enqueued_at": "2025-11-27T10:00:00Z",
                        "started_at": "2025-11-27T10:00:02Z",
                        "heartbeat_at": "2025-11-27T10:00:09Z",
                        "finished_at": "2025-11-27T10:00:09Z",
                        "training_seconds": 6.8,
                    },
                    "error": None,
                    "info": None,
                    "links": {
                        "self": "/v1/runs/4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                        "experiment": "/v1/experiments/0b5e9f2c-6c1d-4a43-9a57-1f7f6c2d9e11",
                        "metrics": "/v1/experiments/0b5e9f2c-6c1d-4a43-9a57-1f7f6c2d9e11/metrics"
                        "?run_id=4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                        "layer_metrics": "/v1/experiments/0b5e9f2c-6c1d-4a43-9a57-1f7f6c2d9e11/layer-metrics"
                        "?run_id=4c1f0a52-2d7e-4b8e-9a61-0f6f2b8d1c33",
                    },
                }
            ]
        }
    )

    id: uuid.UUID
    experiment_id: uuid.UUID
    activation: str = Field(description="The activation label.")
    activation_name: str = Field(description="The catalog name.")
    activation_index: int = Field(description="Position of the activation in the spec.")
    seed: int
    cell: str | None = Field(
        None, description="The run's cell label (hidden=16x32, init=default); null without factors."
    )
    cell_levels: dict[str, Any] | None = Field(
        None, description="The cell's factor levels by spec path; null without factors."
    )
    status: RunStatus
    attempt: int = Field(description="How many times a worker claimed the run; above 1 after a redelivery.")
    queue: str | None
    device: str | None = Field(description="Where it trained, e.g. cpu or cuda:0.")
    worker_host: str | None
    init_scheme: str | None = Field(description="The initialisation actually used (auto resolved).")
    parameter_count: int | None
    activation_placement: str | None
    training_path: str | None = Field(description="unstacked, or stacked when trained with other arms as one model.")
    stack_id: str | None = Field(
        None,
        description="The stack a stacked run trained in (the runs one worker trained as one model); null unstacked.",
    )
    stack_size: int | None = Field(None, description="How many runs that stack trained together; null unstacked.")
    stacking_reason: str | None = Field(
        None,
        description="Why the run trained stacked or alone: stacking off on the worker, not recommended for the spec on "
        "the device (with the engine's reason), no other queued run of its cell to stack with, or why stacking pays "
        "(and the cells the stack spans where it holds runs of several).",
    )
    time_gradients: str | None = Field(
        None,
        description="The gradient through time (recurrent diagnostics): 'measured' for the Elman cell (model.cell "
        "rnn; per-step norms in the layer metrics' time_grad_norms), 'not measured: why' for gru/lstm, null for "
        "models without a recurrence or before the run started.",
    )
    epochs_planned: int
    epochs_completed: int
    diverged_epoch: int | None
    timings: RunTimings
    error: str | None
    info: dict[str, Any] | None = Field(description="Further facts the engine reported about the run.")
    links: RunLinks
