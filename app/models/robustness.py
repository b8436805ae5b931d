"""The robustness table: one row per (run, kind, strength) of a spec's evaluation block."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import utc_now

# The measured values of a robustness row, in the order every table and export shows them.
ROBUSTNESS_VALUE_FIELDS = ("accuracy", "loss")


class RobustnessResult(Base):
    """Test accuracy and loss of one trained run under one perturbation (noise, fgsm, pgd) of one strength."""

    __tablename__ = "robustness"
    __table_args__ = (UniqueConstraint("run_id", "kind", "strength"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # No separate index: the unique key (run_id, kind, strength) leads with run_id and serves run lookups.
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    strength: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    accuracy: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
