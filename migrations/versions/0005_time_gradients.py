"""Recurrent diagnostics: the gradient through time of the Elman cell (issue 13 item 7).

Revision ID: 0005_time_gradients
Revises: 0004_robustness
Created: 2026-12-03

``layer_metrics.time_grad_norms`` holds ||dL/dh_t|| per step of a recurrent layer of our own (a JSON
list, NULL for other layers); ``epoch_metrics`` gains the first recurrent layer's summary
(``time_grad_norm_ratio``, ``time_grad_log_slope``) and the flag over time (``time_gradient_flag``);
``runs.time_gradients`` says whether the run measures it ("measured", "not measured: why"; NULL without a
recurrence). Plain ADD/DROP COLUMN on both databases: none of them is in a constraint or index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_time_gradients"
down_revision: str | None = "0004_robustness"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# (table, column name, type)
_COLUMNS: tuple[tuple[str, str, sa.types.TypeEngine[object]], ...] = (
    ("layer_metrics", "time_grad_norms", _JSON),
    ("epoch_metrics", "time_grad_norm_ratio", sa.Float()),
    ("epoch_metrics", "time_grad_log_slope", sa.Float()),
    ("epoch_metrics", "time_gradient_flag", sa.String(20)),
    ("runs", "time_gradients", sa.String(300)),
)


def upgrade() -> None:
    """Add the time-gradient columns."""
    for table, name, column_type in _COLUMNS:
        op.add_column(table, sa.Column(name, column_type, nullable=True))


def downgrade() -> None:
    """Drop the time-gradient columns."""
    for table, name, _ in reversed(_COLUMNS):
        op.drop_column(table, name)
