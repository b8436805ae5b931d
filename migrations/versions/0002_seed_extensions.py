"""Seed extensions: the seed_extensions table and runs.seed_extension_id (POST /v1/experiments/{id}/seeds).

Revision ID: 0002_seed_extensions
Revises: 0001_initial
Created: 2026-12-02

``runs.seed_extension_id`` names the request that added a run (NULL: the experiment's submission). It is
added in place, without a foreign-key constraint: SQLite can add a constrained column only by copying the
runs table, and with foreign keys on, dropping the old copy would cascade into the metric tables. The
service writes it only with the id of a row it created in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_seed_extensions"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create seed_extensions and add runs.seed_extension_id."""
    op.create_table(
        "seed_extensions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("seeds", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_seed_extensions_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_seed_extensions"),
    )
    op.create_index("ix_seed_extensions_experiment_id", "seed_extensions", ["experiment_id"])
    op.create_index("ix_seed_extensions_created_at", "seed_extensions", ["created_at"])
    op.add_column("runs", sa.Column("seed_extension_id", sa.Uuid(), nullable=True))
    op.create_index("ix_runs_seed_extension_id", "runs", ["seed_extension_id"])


def downgrade() -> None:
    """Drop runs.seed_extension_id and seed_extensions."""
    op.drop_index("ix_runs_seed_extension_id", table_name="runs")
    # A plain DROP COLUMN on both databases (SQLite 3.35+): the column is in no constraint or index now.
    op.drop_column("runs", "seed_extension_id")
    op.drop_index("ix_seed_extensions_created_at", table_name="seed_extensions")
    op.drop_index("ix_seed_extensions_experiment_id", table_name="seed_extensions")
    op.drop_table("seed_extensions")
