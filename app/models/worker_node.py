"""The worker_nodes table: live Celery workers and the queues they consume."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import JsonColumn, utc_now


class WorkerNode(Base):
    """A worker's periodic heartbeat; the API routes device 'auto' to 'gpu' when a GPU worker is fresh."""

    __tablename__ = "worker_nodes"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    queues: Mapped[list[str]] = mapped_column(JsonColumn)
    device: Mapped[str] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
