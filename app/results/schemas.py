"""Output schemas of the results domain (tables are documented by their columns in the router)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field


class RecommendationResponse(BaseModel):
    """Plain-language findings built only from the experiment's measured numbers."""

    experiment_id: uuid.UUID
    metric: str = Field(description="The metric the ranking and tests used.")
    summary: str = Field(description="final, best or mean_last_K.")
    alpha: float = Field(description="Significance level of the Holm-adjusted paired tests.")
    tied_best: list[str] = Field(description="The top-ranked activation followed by those statistically tied with it.")
    sentences: list[str] = Field(description="The findings, one sentence each.")
