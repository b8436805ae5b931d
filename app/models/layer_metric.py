"""The layer_metrics table: one row per (run, epoch, layer)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.types import JsonColumn

# The per-layer values of an epoch, in the order every table and export shows them: the numbers, then the
# JSON values.
LAYER_NUMBER_FIELDS = (
    "grad_norm",
    "weight_norm",
    "activation_mean",
    "activation_std",
    "dead_fraction",
    "saturated_fraction",
)
# JSON values: learnable activation parameters, and ||dL/dh_t|| per step of a recurrent layer of our own.
LAYER_JSON_FIELDS = ("activation_parameters", "time_grad_norms")
LAYER_VALUE_FIELDS = (*LAYER_NUMBER_FIELDS, *LAYER_JSON_FIELDS)


class LayerMetric(Base):
    """Gradient-flow diagnostics of one layer in one epoch of one run."""

    __tablename__ = "layer_metrics"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "layer"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    # No separate index: the unique key (run_id, epoch...) leads with run_id and serves run lookups.
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    layer: Mapped[int] = mapped_column(Integer)
    layer_name: Mapped[str] = mapped_column(String(80))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    weight_norm: Mapped[float | None] = mapped_column(Float)
    activation_mean: Mapped[float | None] = mapped_column(Float)
    activation_std: Mapped[float | None] = mapped_column(Float)
    dead_fraction: Mapped[float | None] = mapped_column(Float)
    saturated_fraction: Mapped[float | None] = mapped_column(Float)
    activation_parameters: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)
    time_grad_norms: Mapped[list[float | None] | None] = mapped_column(JsonColumn)
