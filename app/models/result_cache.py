"""The result_cache table: serialised result responses of finished experiments, one per (experiment, key).

An entry holds the bytes a results endpoint answered for one set of normalised options and the experiment's
``results_version`` when they were computed; it is served only while that version is the experiment's own
(app.results.cache). Deleting the experiment deletes its entries.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import utc_now


class ResultCacheEntry(Base):
    """One cached response: its key (a hash of the endpoint and its normalised options), version and bytes."""

    __tablename__ = "result_cache"

    experiment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    cache_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    results_version: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
