"""``--wait``'s progress bar: an ``actlab.events.ExperimentFollower`` drawn as a bar of finished epochs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

from actlab.events import (
    EVENTS_STALL_SECONDS,
    RECONNECT_ATTEMPTS,
    ExperimentFollower,
    ExperimentProgress,
    deadline_after,
    draw_progress,
    request_timeout,
)
from actlab.http import REQUEST_TIMEOUT_SECONDS, ServiceClient


def wait_for_experiment(
    client: ServiceClient,
    experiment_id: str,
    *,
    poll_seconds: float,
    output: TextIO,
    timeout_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_delay_seconds: float | None = None,
    stall_seconds: float = EVENTS_STALL_SECONDS,
) -> dict[str, Any]:
    """Follow the experiment with a progress bar until it ends; returns its final state.

    Raises WaitTimeoutError when ``timeout_seconds`` ran out first; the experiment goes on.
    """
    from tqdm import tqdm

    deadline = deadline_after(timeout_seconds)
    path = f"/v1/experiments/{experiment_id}"
    experiment: dict[str, Any] = client.get_json(path, timeout=request_timeout(deadline))
    total = int((experiment.get("progress") or {}).get("total_epochs") or 0)
    with tqdm(total=total, unit="epoch", file=output, dynamic_ncols=True, leave=True) as bar:
        progress = ExperimentProgress(experiment, on_update=draw_progress(bar))
        follower = ExperimentFollower(
            client=client,
            experiment_id=experiment_id,
            progress=progress,
            poll_seconds=poll_seconds,
            deadline=deadline,
            sleep=sleep,
            reconnect_attempts=reconnect_attempts,
            reconnect_delay_seconds=reconnect_delay_seconds,
            stall_seconds=stall_seconds,
        )
        follower.follow()
        # The end event carries the status only; the error summary comes with the experiment. The wait is
        # over, so this request is not cut by --timeout.
        experiment = client.get_json(path, timeout=REQUEST_TIMEOUT_SECONDS)
        progress.apply_experiment(experiment)
        return experiment
