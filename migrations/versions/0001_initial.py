"""The initial schema: api_keys, experiments, runs, epoch_metrics, layer_metrics, worker_nodes.

Revision ID: 0001_initial
Revises:
Created: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    # JSONB on PostgreSQL, JSON text elsewhere: the same variant as app.models.types.JsonColumn.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _metric_id() -> sa.types.TypeEngine[int]:
    # BIGINT identity on PostgreSQL; SQLite only auto-increments a plain INTEGER primary key.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("revoked_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )

    op.create_table(
        "worker_nodes",
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("queues", _json(), nullable=False),
        sa.Column("device", sa.String(length=40), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=False),
        sa.Column("last_seen_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("hostname", name="pk_worker_nodes"),
    )

    op.create_table(
        "experiments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("submitted_spec", _json(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=10), nullable=False),
        sa.Column("queue", sa.String(length=20), nullable=True),
        sa.Column("total_epochs", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("cancel_requested_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["api_keys.id"], name="fk_experiments_owner_id_api_keys", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_experiments_owner_id_idempotency_key"),
    )
    op.create_index("ix_experiments_name", "experiments", ["name"])
    op.create_index("ix_experiments_status", "experiments", ["status"])
    op.create_index("ix_experiments_spec_hash", "experiments", ["spec_hash"])
    op.create_index("ix_experiments_owner_id", "experiments", ["owner_id"])
    op.create_index("ix_experiments_created_at", "experiments", ["created_at"])
    op.create_index(
        "ix_experiments_anonymous_idempotency_key",
        "experiments",
        ["idempotency_key"],
        unique=True,
        sqlite_where=sa.text("owner_id IS NULL"),
        postgresql_where=sa.text("owner_id IS NULL"),
    )

    op.create_table(
        "runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("activation_index", sa.Integer(), nullable=False),
        sa.Column("activation_label", sa.String(length=200), nullable=False),
        sa.Column("activation_name", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("queue", sa.String(length=20), nullable=True),
        sa.Column("device", sa.String(length=40), nullable=True),
        sa.Column("worker_host", sa.String(length=255), nullable=True),
        sa.Column("init_scheme", sa.String(length=80), nullable=True),
        sa.Column("parameter_count", sa.Integer(), nullable=True),
        sa.Column("activation_placement", sa.String(length=40), nullable=True),
        sa.Column("training_path", sa.String(length=20), nullable=True),
        sa.Column("epochs_completed", sa.Integer(), nullable=False),
        sa.Column("diverged_epoch", sa.Integer(), nullable=True),
        sa.Column("training_seconds", sa.Float(), nullable=True),
        sa.Column("info", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("enqueued_at", _timestamp(), nullable=True),
        sa.Column("heartbeat_at", _timestamp(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.id"], name="fk_runs_experiment_id_experiments", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint(
            "experiment_id", "activation_index", "seed", name="uq_runs_experiment_id_activation_index_seed"
        ),
    )
    op.create_index("ix_runs_experiment_id", "runs", ["experiment_id"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_status_heartbeat", "runs", ["status", "heartbeat_at"])

    op.create_table(
        "epoch_metrics",
        sa.Column("id", _metric_id(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("train_accuracy", sa.Float(), nullable=True),
        sa.Column("test_loss", sa.Float(), nullable=True),
        sa.Column("test_accuracy", sa.Float(), nullable=True),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("val_accuracy", sa.Float(), nullable=True),
        sa.Column("epoch_seconds", sa.Float(), nullable=True),
        sa.Column("samples_per_second", sa.Float(), nullable=True),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("grad_norm_ratio", sa.Float(), nullable=True),
        sa.Column("gradient_flag", sa.String(length=20), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_epoch_metrics_run_id_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_epoch_metrics"),
        sa.UniqueConstraint("run_id", "epoch", name="uq_epoch_metrics_run_id_epoch"),
    )

    op.create_table(
        "layer_metrics",
        sa.Column("id", _metric_id(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("layer_name", sa.String(length=80), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("weight_norm", sa.Float(), nullable=True),
        sa.Column("activation_mean", sa.Float(), nullable=True),
        sa.Column("activation_std", sa.Float(), nullable=True),
        sa.Column("dead_fraction", sa.Float(), nullable=True),
        sa.Column("saturated_fraction", sa.Float(), nullable=True),
        sa.Column("activation_parameters", _json(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_layer_metrics_run_id_runs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_layer_metrics"),
        sa.UniqueConstraint("run_id", "epoch", "layer", name="uq_layer_metrics_run_id_epoch_layer"),
    )


def downgrade() -> None:
    """Drop every table."""
    op.drop_table("layer_metrics")
    op.drop_table("epoch_metrics")
    op.drop_index("ix_runs_status_heartbeat", table_name="runs")
    op.drop_index("ix_runs_status", table_name="runs")
    op.drop_index("ix_runs_experiment_id", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_experiments_anonymous_idempotency_key", table_name="experiments")
    op.drop_index("ix_experiments_created_at", table_name="experiments")
    op.drop_index("ix_experiments_owner_id", table_name="experiments")
    op.drop_index("ix_experiments_spec_hash", table_name="experiments")
    op.drop_index("ix_experiments_status", table_name="experiments")
    op.drop_index("ix_experiments_name", table_name="experiments")
    op.drop_table("experiments")
    op.drop_table("worker_nodes")
    op.drop_table("api_keys")
