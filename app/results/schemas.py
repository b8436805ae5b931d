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
    equivalence_margin: float | None = Field(
        description="Margin of the equivalence tests (TOST); null when none is tested (loss metrics without one)."
    )
    correction: str = Field(description="The comparison family the ranking's verdicts come from (the pairwise view).")
    best_choices: list[str] = Field(
        description="The top-ranked activation that trained followed by those shown equivalent to it; empty when "
        "none trained."
    )
    not_trained: list[str] = Field(description="Activations whose mean final test accuracy is at most chance + margin.")
    sentences: list[str] = Field(description="The findings, one sentence each.")
