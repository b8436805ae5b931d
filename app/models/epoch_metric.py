"""The epoch_metrics table: one row per (run, epoch)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import utc_now

# The per-epoch values of a run, in the order every table and export shows them (after the epoch): the optimiser
# steps taken, the numbers, the flags and how the train metrics were measured (training.train_metrics: running or
# after_epoch).
EPOCH_NUMBER_FIELDS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_seconds",
    "samples_per_second",
    "lr",
    "grad_norm_ratio",
    "time_grad_norm_ratio",
    "time_grad_log_slope",
)
# The flags (vanishing, exploding or NULL): over depth, and over time for a recurrence of our own.
EPOCH_FLAG_FIELDS = ("gradient_flag", "time_gradient_flag")
EPOCH_VALUE_FIELDS = ("step", *EPOCH_NUMBER_FIELDS, *EPOCH_FLAG_FIELDS, "train_metrics")


class EpochMetric(Base):
    """Loss, accuracy, timing and gradient-flow summary of one epoch of one run."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # No separate index: the unique key (run_id, epoch...) leads with run_id and serves run lookups.
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    # Optimiser steps taken before the row's measurements: epoch x batches per epoch (0 for epoch 0); NULL for rows
    # recorded before the column existed.
    step: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    epoch_seconds: Mapped[float | None] = mapped_column(Float)
    samples_per_second: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    grad_norm_ratio: Mapped[float | None] = mapped_column(Float)
    gradient_flag: Mapped[str | None] = mapped_column(String(20))
    # The gradient through time (app.gradient_flow): dL/dh_1 over dL/dh_T of the first recurrent layer, the
    # log-slope per step back in time, and the flag over time; NULL without a recurrence of our own.
    time_grad_norm_ratio: Mapped[float | None] = mapped_column(Float)
    time_grad_log_slope: Mapped[float | None] = mapped_column(Float)
    time_gradient_flag: Mapped[str | None] = mapped_column(String(20))
    train_metrics: Mapped[str] = mapped_column(String(20), default="running", server_default="running")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
