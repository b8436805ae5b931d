"""Retrying a database write through a short outage, so a blip does not cost a run its attempt.

A worker's writes (an epoch's metrics, the run's start and end) are idempotent and fenced by
the attempt number, so repeating a transaction that failed on a dropped or refused
connection is safe: at worst it writes the same row again. Past the patience the error goes
up to the task, whose bounded retry resumes the run from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds before the first repeat, and the longest pause between two.
FIRST_DELAY = 0.5
LONGEST_DELAY = 5.0


def retry_transient(
    operation: Callable[[], T],
    *,
    what: str,
    patience_seconds: float,
    is_transient: Callable[[BaseException], bool],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``operation``; while it fails transiently and ``patience_seconds`` have not passed, wait and run it again.

    Waits grow from FIRST_DELAY to LONGEST_DELAY seconds. A non-transient error, or a transient
    one after the patience is spent, propagates unchanged.
    """
    deadline = clock() + patience_seconds
    delay = FIRST_DELAY
    failures = 0
    while True:
        try:
            result = operation()
        except Exception as error:
            if not is_transient(error):
                raise
            failures += 1
            remaining = deadline - clock()
            if remaining <= 0:
                logger.error("%s: database still unreachable after %d tries; giving up: %s", what, failures, error)
                raise
            pause = min(delay, remaining)
            logger.warning(
                "%s: database unreachable (%s: %s); retrying in %.1f s (try %d, %.0f s of patience left)",
                what,
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
                pause,
                failures,
                remaining,
            )
            sleep(pause)
            delay = min(delay * 2, LONGEST_DELAY)
            continue
        if failures:
            logger.info("%s: written after %d failed tries", what, failures)
        return result
