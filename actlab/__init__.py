"""The Python client of an Activation Lab service: HTTP plumbing (``actlab.http``) and event following
(``actlab.events``).

The ``actlab`` commands that talk to a service (``submit``, ``status``, ``results``, in ``app.cli``)
are built on these two modules; they import nothing of the service itself (no ``app``, no ``worker``).

    from actlab import ServiceClient

    with ServiceClient("http://127.0.0.1:8000", api_key="al_...") as client:
        experiment = client.get_json(f"/v1/experiments/{experiment_id}")
"""

from __future__ import annotations

from actlab.events import (
    ExperimentFollower,
    ExperimentProgress,
    ServerSentEvent,
    ServerSentEventParser,
    WaitTimeoutError,
)
from actlab.http import DEFAULT_URL, ClientError, ServiceClient, ServiceUnreachableError

__all__ = [
    "DEFAULT_URL",
    "ClientError",
    "ExperimentFollower",
    "ExperimentProgress",
    "ServerSentEvent",
    "ServerSentEventParser",
    "ServiceClient",
    "ServiceUnreachableError",
    "WaitTimeoutError",
]
