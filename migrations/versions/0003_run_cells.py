"""Factorial experiments: runs carry their cell (runs.cell_index, cell_label, cell_levels; spec version 2).

Revision ID: 0003_run_cells
Revises: 0002_seed_extensions
Created: 2026-12-02

One run per (cell, activation, seed): the unique constraint on (experiment_id, activation_index, seed)
gains ``cell_index`` (0 for every run of a version-1 experiment, whose label and levels stay NULL).
PostgreSQL swaps the constraint in place. SQLite can change a constraint only by copying the runs table,
and dropping the old copy deletes the metric rows that cascade from it, so those rows are kept aside in
temporary tables and put back once the new runs table is in place. A downgrade fails while an
experiment has more than one cell (the old constraint cannot hold); delete those experiments first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_run_cells"
down_revision: str | None = "0002_seed_extensions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("uq_runs_experiment_id_activation_index_seed", ["experiment_id", "activation_index", "seed"])
_NEW = (
    "uq_runs_experiment_id_cell_index_activation_index_seed",
    ["experiment_id", "cell_index", "activation_index", "seed"],
)
# Tables whose rows cascade from runs.
_CHILDREN = ("epoch_metrics", "layer_metrics")


def _swap_constraint(drop: tuple[str, list[str]], create: tuple[str, list[str]], columns: list[sa.Column]) -> None:
    """Add ``columns`` (or drop the cell columns when empty) and swap the unique constraint."""
    if op.get_bind().dialect.name != "sqlite":
        for column in columns:
            op.add_column("runs", column)
        op.drop_constraint(drop[0], "runs", type_="unique")
        op.create_unique_constraint(create[0], "runs", create[1])
        if not columns:
            for name in ("cell_levels", "cell_label", "cell_index"):
                op.drop_column("runs", name)
        return
    for child in _CHILDREN:
        op.execute(f"CREATE TEMP TABLE _kept_{child} AS SELECT * FROM {child}")
    with op.batch_alter_table("runs", recreate="always") as batch:
        for column in columns:
            batch.add_column(column)
        batch.drop_constraint(drop[0], type_="unique")
        if not columns:
            for name in ("cell_levels", "cell_label", "cell_index"):
                batch.drop_column(name)
        batch.create_unique_constraint(create[0], create[1])
    for child in _CHILDREN:
        op.execute(f"DELETE FROM {child}")
        op.execute(f"INSERT INTO {child} SELECT * FROM _kept_{child}")
        op.execute(f"DROP TABLE _kept_{child}")


def upgrade() -> None:
    """Add runs.cell_index, cell_label and cell_levels; make (experiment, cell, activation, seed) unique."""
    _swap_constraint(
        _OLD,
        _NEW,
        [
            sa.Column("cell_index", sa.Integer(), nullable=False, server_default="0"),
            sa.Column("cell_label", sa.String(500), nullable=True),
            sa.Column("cell_levels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        ],
    )


def downgrade() -> None:
    """Drop the cell columns and restore the (experiment, activation, seed) constraint."""
    _swap_constraint(_NEW, _OLD, [])
