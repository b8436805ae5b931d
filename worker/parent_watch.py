"""A worker started by `actlab serve` exits within seconds once the service that started it is gone.

`actlab serve` (app/cli/supervisor.py) sets ``ACTLAB_SUPERVISOR_PID`` to its own pid in the
worker's environment; a worker started any other way (``actlab worker`` by hand, under systemd
or docker) has no such parent and is not watched. A watched worker arms two mechanisms:

- on Linux, the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``), in the
  worker's main process and in each pool process (``worker_process_init``): the moment the
  parent exits, even by ``kill -9``, the process is killed;
- everywhere, a daemon thread that compares ``os.getppid()`` with the expected parent every
  ``worker_parent_watch_seconds``: for systems without the signal, and for a parent that died
  before the signal was armed.

Both end the process hard (SIGKILL or ``os._exit``), never by Celery's cold shutdown: with no
parent left, that shutdown waits forever in billiard's pool join, holding the pool's memory. Its
runs stay ``running`` in the database; the next start of `actlab serve` puts them back to the
queue (``rebuild_embedded_queue``), and a worker's reaper takes over runs of any worker that
silently stopped (worker/maintenance.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import worker_process_init

from app.config import get_settings

logger = logging.getLogger(__name__)

# Set by `actlab serve` in the environment of the worker it starts: the pid the worker's parent must have.
SUPERVISOR_PID_VARIABLE = "ACTLAB_SUPERVISOR_PID"
# <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
# The exit status of a process that left because its parent was gone.
ORPHANED_EXIT_STATUS = 3

# The pid of the watched worker's main process, inherited by its forked pool processes (None: not watched).
_main_pid: int | None = None


def set_parent_death_signal() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent exits; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class ParentWatch:
    """A daemon thread that calls ``on_orphaned`` once this process's parent is no longer ``parent_pid``."""

    def __init__(self, *, parent_pid: int, interval: float, on_orphaned: Callable[[], None]) -> None:
        self.parent_pid = parent_pid
        self._interval = interval
        self._on_orphaned = on_orphaned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="parent-watch", daemon=True)

    def start(self) -> None:
        """Start watching in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (for tests; a watched worker watches until it exits)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def orphaned(self) -> bool:
        """Whether the parent is gone (this process was handed to init or a subreaper)."""
        return os.getppid() != self.parent_pid

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self.orphaned():
                self._on_orphaned()
                return


def _end_worker_tree() -> None:
    """The worker's main process lost `actlab serve`: kill its process group (it and its pool), else exit."""
    logger.error("the worker's parent, `actlab serve`, is gone: stopping this worker and its pool at once")
    logging.shutdown()
    # `actlab serve` starts the worker in a session of its own: the group is the worker and its pool processes.
    if os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(ORPHANED_EXIT_STATUS)


def _end_pool_process() -> None:
    os._exit(ORPHANED_EXIT_STATUS)


def _arm(*, parent_pid: int, on_orphaned: Callable[[], None]) -> None:
    """Arm the parent-death signal and start the watch thread; ``on_orphaned`` at once if the parent is gone."""
    set_parent_death_signal()
    watch = ParentWatch(
        parent_pid=parent_pid, interval=get_settings().worker_parent_watch_seconds, on_orphaned=on_orphaned
    )
    # The parent may have died before the signal was armed: then the signal never comes.
    if watch.orphaned():
        on_orphaned()
    watch.start()


def watch_parent() -> bool:
    """In the worker's main process, before Celery starts: watch the parent named by ACTLAB_SUPERVISOR_PID.

    Returns whether the worker is watched. Exits at once when that parent is already gone.
    """
    global _main_pid
    text = os.environ.get(SUPERVISOR_PID_VARIABLE, "").strip()
    if not text.isdigit():
        return False
    _main_pid = os.getpid()
    _arm(parent_pid=int(text), on_orphaned=_end_worker_tree)
    return True


@worker_process_init.connect
def _watch_the_main_process(**_: Any) -> None:
    # A pool process of a watched worker: its parent is the worker's main process. The parent-death
    # signal is cleared by fork, and the main process's watch thread did not survive it: arm both again.
    if _main_pid is not None:
        _arm(parent_pid=_main_pid, on_orphaned=_end_pool_process)
