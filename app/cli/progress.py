"""``--wait``'s progress bar: ``actlab.events.follow_with_bar`` drawn on the terminal as a bar of finished epochs."""

from __future__ import annotations

from typing import Any, TextIO

from actlab.events import follow_with_bar
from actlab.http import ServiceClient


def wait_for_experiment(
    client: ServiceClient, experiment_id: str, *, output: TextIO, **follow_options: Any
) -> dict[str, Any]:
    """Follow the experiment with a progress bar on ``output`` until it ends; returns its final state.

    ``follow_options`` are those of ``follow_with_bar`` (poll_seconds, timeout_seconds, sleep, reconnect_attempts,
    reconnect_delay_seconds, stall_seconds). Raises WaitTimeoutError when the timeout ran out first; the
    experiment goes on.
    """
    from tqdm import tqdm

    return follow_with_bar(
        client,
        experiment_id,
        make_bar=lambda total: tqdm(total=total, unit="epoch", file=output, dynamic_ncols=True, leave=True),
        **follow_options,
    )
