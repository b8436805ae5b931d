"""SQL of the worker_nodes table: workers record that they are alive, the API asks which are.

Worker liveness (worker/heartbeat.py), not a run's heartbeat (``runs.heartbeat_at``, app/runs/state_repository.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import WorkerNode
from app.models.types import utc_now


def upsert_worker_node(
    *,
    session: Session,
    hostname: str,
    queues: list[str],
    device: str,
    starting: bool = False,
    now: datetime | None = None,
) -> None:
    """Record that the worker ``hostname`` is alive, consuming ``queues`` on ``device``; ``starting`` resets started_at."""
    now = now or utc_now()
    node = session.get(WorkerNode, hostname)
    if node is None:
        session.add(WorkerNode(hostname=hostname, queues=list(queues), device=device, started_at=now, last_seen_at=now))
        return
    node.queues = list(queues)
    node.device = device
    node.last_seen_at = now
    if starting:
        node.started_at = now


def get_worker_node(*, session: Session, hostname: str) -> WorkerNode | None:
    """The liveness row of the worker ``hostname``, if it ever recorded one."""
    return session.get(WorkerNode, hostname)


def workers_seen_since(*, session: Session, since: datetime) -> list[WorkerNode]:
    """Workers whose last liveness record is at or after ``since``."""
    return list(session.execute(select(WorkerNode).where(WorkerNode.last_seen_at >= since)).scalars().all())
