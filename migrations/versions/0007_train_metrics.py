"""How each epoch's train loss and accuracy were measured: epoch_metrics.train_metrics (spec version 2).

Revision ID: 0007_train_metrics
Revises: 0006_run_stacking
Created: 2026-12-03

``running`` (the mean over the epoch's batches as they trained, the only kind before this column) or
``after_epoch`` (the whole training split in eval mode after the epoch's steps), echoing the spec's
``training.train_metrics``. Existing rows were all measured the running way and get that value.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_train_metrics"
down_revision: str | None = "0006_run_stacking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add epoch_metrics.train_metrics, 'running' for every existing row."""
    op.add_column(
        "epoch_metrics", sa.Column("train_metrics", sa.String(length=20), nullable=False, server_default="running")
    )


def downgrade() -> None:
    """Drop epoch_metrics.train_metrics."""
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("train_metrics")
