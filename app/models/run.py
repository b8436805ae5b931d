"""The runs table: one (cell, activation, seed) arm of an experiment."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base
from app.models.types import JsonColumn, utc_now

if TYPE_CHECKING:
    from app.models.experiment import Experiment


class Run(Base):
    """One arm: its status, attempts, heartbeat, placement and timings."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("experiment_id", "cell_index", "activation_index", "seed"),
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    activation_index: Mapped[int] = mapped_column(Integer)
    activation_label: Mapped[str] = mapped_column(String(200))
    activation_name: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    # The run's cell of a factorial (version-2) spec, in app.spec_factors.expand_cells order; 0 with NULL label
    # and levels for a version-1 spec. The worker trains it with run_spec(experiment.spec, cell_levels).
    cell_index: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cell_label: Mapped[str | None] = mapped_column(String(500))
    cell_levels: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)
    status: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    # Incremented on every claim; metric writes carry it so a stale worker's rows are fenced off.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64))
    queue: Mapped[str | None] = mapped_column(String(20))
    device: Mapped[str | None] = mapped_column(String(40))
    worker_host: Mapped[str | None] = mapped_column(String(255))
    init_scheme: Mapped[str | None] = mapped_column(String(80))
    parameter_count: Mapped[int | None] = mapped_column(Integer)
    activation_placement: Mapped[str | None] = mapped_column(String(40))
    training_path: Mapped[str | None] = mapped_column(String(20))
    # The gradient through time: NULL without a recurrence, "measured" (Elman cell), "not measured: why" (GRU/LSTM).
    time_gradients: Mapped[str | None] = mapped_column(String(300))
    # How it trained: a stacked run's stack (the runs one worker delivery trained as one model: id and size,
    # NULL when unstacked) and why it trained stacked or alone (worker/stacked_runner.py, plan_stack).
    stack_id: Mapped[str | None] = mapped_column(String(36))
    stack_size: Mapped[int | None] = mapped_column(Integer)
    stacking_reason: Mapped[str | None] = mapped_column(Text)
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    training_seconds: Mapped[float | None] = mapped_column(Float)
    info: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)
    error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The seed_extensions row of the request that added this run's seed; NULL: the submission itself.
    # No foreign-key constraint: SQLite could add one only by copying the runs table (migration 0002).
    seed_extension_id: Mapped[uuid.UUID | None] = mapped_column(index=True)

    experiment: Mapped[Experiment] = relationship(back_populates="runs")
