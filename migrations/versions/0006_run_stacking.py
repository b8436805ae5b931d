"""How each run trained: its stack (runs.stack_id, stack_size) and why stacked or alone (runs.stacking_reason).

Revision ID: 0006_run_stacking
Revises: 0005_time_gradients
Created: 2026-12-03

Issue 12: a run records whether it trained stacked, with the id and size of its stack, or alone, with the
reason (stacking off, not recommended for the spec on the device, no other queued run of its cell to stack
with, the engine's own fallback). Plain ADD/DROP COLUMN on both databases: none is in a constraint or index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_run_stacking"
down_revision: str | None = "0005_time_gradients"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (column name, type)
_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[object]], ...] = (
    ("stack_id", sa.String(36)),
    ("stack_size", sa.Integer()),
    ("stacking_reason", sa.Text()),
)


def upgrade() -> None:
    """Add the stacking columns to runs."""
    for name, column_type in _COLUMNS:
        op.add_column("runs", sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    """Drop the stacking columns."""
    for name, _ in reversed(_COLUMNS):
        op.drop_column("runs", name)
