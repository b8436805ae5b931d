"""GET /metrics: the Prometheus scrape endpoint (open, like the health checks)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.monitoring.service import ServiceMetrics

router = APIRouter(tags=["meta"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    """Requests and latencies, queue depth, runs and experiments by status, epoch durations."""
    metrics: ServiceMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
