"""Column helpers shared by the tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy.dialects.postgresql import JSONB

# JSONB on PostgreSQL, JSON text elsewhere.
JsonColumn: Any = JSON().with_variant(JSONB(), "postgresql")


def utc_now() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)
