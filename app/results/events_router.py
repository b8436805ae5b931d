"""HTTP endpoint of live progress: an experiment's server-sent events (produced in app.results.events)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.dependencies import SessionFactoryDependency, stream_limits
from app.experiments import service as experiments_service
from app.results.events import experiment_event_stream
from app.schemas import MessageResponse
from app.streaming import AdmittedStreamingResponse, stream_refused_response

# Live events belong with the results in the API description (one tag, as before they had their own router).
router = APIRouter(prefix="/v1/experiments", tags=["results"])


@router.get(
    "/{experiment_id}/events",
    response_class=StreamingResponse,
    summary="Live progress as server-sent events",
    description="text/event-stream: one `epoch` event per newly stored epoch (run id, activation, seed, "
    "epoch, metrics, epochs_finished, epochs_total), one `status` event per status change of a run "
    "(scope run) or of the experiment (scope experiment), comment heartbeats, and a final `end` event "
    "once the experiment has finished. Epochs already stored are sent first.",
    responses={
        200: {"content": {"text/event-stream": {}}},
        404: {"model": MessageResponse},
        503: stream_refused_response("max_event_streams"),
    },
)
def events(experiment_id: uuid.UUID, request: Request, session_factory: SessionFactoryDependency) -> StreamingResponse:
    """Stream the experiment's progress until it finishes."""
    limits = stream_limits(request)
    # Admitted (or 503 with Retry-After) before the stream starts; it holds a connection only while it polls.
    permit = limits.events.admit()
    try:
        with session_factory() as session:
            experiments_service.require_experiment(session=session, experiment_id=experiment_id)
    except BaseException:
        permit.release()
        raise
    return AdmittedStreamingResponse(
        experiment_event_stream(
            session_factory=session_factory,
            experiment_id=experiment_id,
            poll_seconds=limits.event_poll_seconds,
            heartbeat_seconds=limits.event_heartbeat_seconds,
            poll_limiter=limits.event_polls,
        ),
        permit=permit,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
