"""Cached results: experiments.results_version and the result_cache table.

Revision ID: 0008_result_cache
Revises: 0007_train_metrics
Created: 2026-12-03

``results_version`` counts the writes that can change an experiment's results; ``result_cache`` holds the
serialised responses of results endpoints with the version they were computed at (app.results.cache).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_result_cache"
down_revision: str | None = "0007_train_metrics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add experiments.results_version (0) and create result_cache."""
    op.add_column("experiments", sa.Column("results_version", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "result_cache",
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=False),
        sa.Column("results_version", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_result_cache_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "cache_key", name=op.f("pk_result_cache")),
    )


def downgrade() -> None:
    """Drop result_cache and experiments.results_version."""
    op.drop_table("result_cache")
    # A plain DROP COLUMN (SQLite 3.35+ has it): a batch copy of experiments would cascade into deleting its runs.
    op.drop_column("experiments", "results_version")
