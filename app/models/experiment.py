"""The experiments table: one submitted spec."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base
from app.models.types import JsonColumn, utc_now

if TYPE_CHECKING:
    from app.models.run import Run


class Experiment(Base):
    """A submitted experiment spec and its aggregate state."""

    __tablename__ = "experiments"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        # NULL owners never collide in the constraint above, so keys sent without an owner
        # (no authentication) need their own partial unique index to stop duplicate submissions.
        Index(
            "ix_experiments_anonymous_idempotency_key",
            "idempotency_key",
            unique=True,
            sqlite_where=text("owner_id IS NULL"),
            postgresql_where=text("owner_id IS NULL"),
        ),
        Index("ix_experiments_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JsonColumn)
    submitted_spec: Mapped[dict[str, Any]] = mapped_column(JsonColumn)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    spec_version: Mapped[int] = mapped_column(Integer, default=1)
    device: Mapped[str] = mapped_column(String(10), default="auto")
    queue: Mapped[str | None] = mapped_column(String(20))
    total_epochs: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    owner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped by every write that can change the experiment's results (epoch rows, run ends, new seeds, retries,
    # imported rows); cached result responses (app.results.cache) are valid only for the version they were made at.
    results_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment", order_by="(Run.activation_index, Run.seed)", cascade="all, delete-orphan"
    )
