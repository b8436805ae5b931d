"""Robustness of trained runs: the robustness table (spec version 2's evaluation block).

Revision ID: 0004_robustness
Revises: 0003_run_cells
Created: 2026-12-03

One row per (run, kind, strength): test accuracy and loss under Gaussian input noise, FGSM or PGD,
written by the worker with the run's end. Its rows cascade from runs; a later migration that copies
the runs table on SQLite (as 0003 does) must keep them aside like the metric rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_robustness"
down_revision: str | None = "0003_run_cells"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the robustness table."""
    op.create_table(
        "robustness",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("strength", sa.Float(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_robustness_run_id_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_robustness"),
        sa.UniqueConstraint("run_id", "kind", "strength", name="uq_robustness_run_id_kind_strength"),
    )


def downgrade() -> None:
    """Drop the robustness table."""
    op.drop_table("robustness")
