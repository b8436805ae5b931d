"""The seed_extensions table: one request that added seeds to an experiment (POST /v1/experiments/{id}/seeds)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import JsonColumn, utc_now


class SeedExtension(Base):
    """Which seeds one request added, and when; the runs it created point at it (runs.seed_extension_id)."""

    __tablename__ = "seed_extensions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    seeds: Mapped[list[int]] = mapped_column(JsonColumn)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now, index=True)
