"""The Python client of an Activation Lab service.

    from actlab import Client

    with Client() as client:  # $ACTLAB_URL, $ACTLAB_API_KEY or the key `actlab serve` saved, as the CLI
        experiment = client.submit("spec.json")
        experiment.wait()
        table = experiment.results()  # a pandas DataFrame

``actlab.client`` (Client, Experiment, Plot) is built on the HTTP plumbing (``actlab.http``), the errors
(``actlab.errors``), where the service is and which key to send (``actlab.connection``) and event following
(``actlab.events``). The ``actlab`` commands that talk to a service (in ``app.cli``) use the same modules;
none of them imports the service itself (no ``app``, no ``worker``).
"""

from __future__ import annotations

from actlab.client import Client, Experiment, Plot
from actlab.errors import (
    AuthError,
    ClientError,
    Conflict,
    NotFound,
    QuotaExceeded,
    ServiceUnreachableError,
    SpecError,
)
from actlab.events import (
    ExperimentFollower,
    ExperimentProgress,
    ServerSentEvent,
    ServerSentEventParser,
    WaitTimeoutError,
)
from actlab.http import DEFAULT_URL, ServiceClient

__all__ = [
    "DEFAULT_URL",
    "AuthError",
    "Client",
    "ClientError",
    "Conflict",
    "Experiment",
    "ExperimentFollower",
    "ExperimentProgress",
    "NotFound",
    "Plot",
    "QuotaExceeded",
    "ServerSentEvent",
    "ServerSentEventParser",
    "ServiceClient",
    "ServiceUnreachableError",
    "SpecError",
    "WaitTimeoutError",
]
