"""Output schemas of archives (the input is the zip itself)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from app.models import ExperimentStatus


class ImportResponse(BaseModel):
    """What POST /v1/experiments/import stored."""

    id: uuid.UUID = Field(description="The new experiment's id.")
    imported_from: str | None = Field(description="The id the experiment had where it was exported.")
    name: str
    status: ExperimentStatus
    spec_hash: str
    runs: int
    epoch_metrics: int
    layer_metrics: int
    robustness: int = Field(0, description="Robustness rows (robustness.csv; none without an evaluation block).")
    links: dict[str, str]
