"""The optimiser steps behind each metrics row: epoch_metrics.step.

Revision ID: 0009_epoch_step
Revises: 0008_result_cache
Created: 2026-12-03

The steps taken before the row's measurements: epoch x batches per epoch for an epoch-based run (0 for epoch 0,
the network at initialisation). Rows recorded before the column existed keep it NULL: their batches per epoch
depend on the spec's data and batch size, which SQL does not know.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_epoch_step"
down_revision: str | None = "0008_result_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add epoch_metrics.step, NULL for every existing row."""
    op.add_column("epoch_metrics", sa.Column("step", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop epoch_metrics.step."""
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("step")
