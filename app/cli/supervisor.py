"""The worker of `actlab serve`: started as a child, restarted when it dies, asked by /readyz whether it is up.

A thread of the service (``EmbeddedWorker``) starts ``actlab worker --queues cpu,gpu`` in a
process group of its own and waits for it. When it exits without being asked to (``kill -9``, the
OOM killer, a crash), the thread kills what is left of its group (pool processes), prints why,
waits ``worker_restart_backoff_seconds`` (doubled for each further restart within
``worker_restart_window_seconds``), runs ``before_start`` (the embedded mode puts the dead worker's
runs back to the queue there, as at the service's start) and starts a new worker. After
``worker_restart_limit`` restarts within the window it gives up, and /readyz stays 503.

Readiness, one rule: the worker is ready when the process this supervisor started last is
running and its liveness row (worker_nodes, written by worker/heartbeat.py) was started after
that process was and is fresh (``worker_fresh_seconds``). So /readyz answers 503 from the moment
the worker dies until its successor has started consuming.

The worker learns its parent from ``ACTLAB_SUPERVISOR_PID`` and exits within seconds once the
service is gone (worker/parent_watch.py). The thread that starts the worker lives until that
worker has exited: on Linux the parent-death signal follows the thread that started the child.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from app.config import Settings
from app.models.types import utc_now
from app.schemas import as_utc

# Seconds a stopping worker gets before its process group is killed.
WORKER_STOP_SECONDS = 30.0


def embedded_worker_hostname() -> str:
    """The Celery node name of the service's worker (its worker_nodes row)."""
    return f"actlab-embedded@{socket.gethostname()}"


def start_worker_process(*, concurrency: int, loglevel: str, hostname: str) -> subprocess.Popen[bytes]:
    """Start `actlab worker --queues cpu,gpu` as a child in its own process group, watching this process."""
    from worker.parent_watch import SUPERVISOR_PID_VARIABLE

    command = [
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--queues=cpu,gpu",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname={hostname}",
        # Stopping the embedded service should be quick: a running run goes back to the queue at
        # once and resumes from its last finished epoch at the next start.
        "--soft-shutdown-timeout=0",
    ]
    environment = {**os.environ, SUPERVISOR_PID_VARIABLE: str(os.getpid())}
    # Its own process group: Ctrl-C reaches only `actlab serve`, which then stops the worker in order.
    return subprocess.Popen(command, start_new_session=True, env=environment)


def kill_worker_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of the worker's process group (pool processes that outlived their parent)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_worker_process(process: subprocess.Popen[bytes], *, timeout: float = WORKER_STOP_SECONDS) -> None:
    """Cold-stop the worker (its running runs go back to the queue), then kill its group if it hangs."""
    if process.returncode is None:
        # Only the main process: it stops its pool children itself and requeues what they were running.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_worker_group(process)
            process.wait(timeout=10)
    kill_worker_group(process)


def describe_exit(returncode: int) -> str:
    """'was killed by SIGKILL' or 'exited with status 1'."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _say(message: str) -> None:
    print(f"actlab serve: {message}", file=sys.stderr, flush=True)


class EmbeddedWorker:
    """The service's worker process, restarted with backoff when it dies; ``check`` is its readiness."""

    def __init__(
        self,
        *,
        settings: Settings,
        concurrency: int,
        loglevel: str,
        before_start: Callable[[], None] | None = None,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.hostname = hostname or embedded_worker_hostname()
        self._concurrency = concurrency
        self._loglevel = loglevel
        self._before_start = before_start
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at: datetime | None = None
        self._down_reason = "the worker has not started yet"
        self._restarts: collections.deque[float] = collections.deque()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        """The pid of the current worker process (None before the first start)."""
        with self._lock:
            return self._process.pid if self._process is not None else None

    def start(self) -> int:
        """Start the worker (in the supervising thread) and return its pid."""
        self._thread.start()
        self._started.wait()
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"the worker did not start: {self._down_reason}")
        return pid

    def stop(self, *, timeout: float = WORKER_STOP_SECONDS) -> None:
        """Cold-stop the worker (running runs go back to the queue) and end the supervision."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            stop_worker_process(process, timeout=timeout)
        self._thread.join(timeout=timeout + 15)

    def check(self) -> tuple[bool, str]:
        """(ready, detail) for /readyz: the worker runs and recorded, since it started, that it consumes the queues."""
        with self._lock:
            process, started_at, reason = self._process, self._started_at, self._down_reason
        if process is None or started_at is None or process.returncode is not None:
            return False, reason
        from app.db import session_scope
        from app.workers.repository import get_worker_node

        try:
            with session_scope() as session:
                node = get_worker_node(session=session, hostname=self.hostname)
                recorded = (as_utc(node.started_at), as_utc(node.last_seen_at)) if node is not None else None
        except Exception as error:
            return False, f"could not read the liveness of worker process {process.pid}: {type(error).__name__}"
        if recorded is None or recorded[0] is None or recorded[0] < started_at:
            return False, f"worker process {process.pid} is starting"
        fresh_since = utc_now() - timedelta(seconds=self.settings.worker_fresh_seconds)
        if recorded[1] is None or recorded[1] < fresh_since:
            return False, (
                f"worker process {process.pid} recorded no liveness for {self.settings.worker_fresh_seconds:g} s "
                "(setting ACTLAB_WORKER_FRESH_SECONDS)"
            )
        return True, f"worker process {process.pid} consumes the queues cpu and gpu"

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        if self._before_start is not None:
            try:
                self._before_start()
            except Exception as error:
                # The reaper of the new worker takes the runs over later; a worker is still better than none.
                _say(f"could not put the previous worker's runs back to the queue: {error}")
        with self._lock:
            if self._stopping.is_set():
                return None
            self._started_at = utc_now()
            self._process = start_worker_process(
                concurrency=self._concurrency, loglevel=self._loglevel, hostname=self.hostname
            )
            return self._process

    def _restart_delay(self) -> float | None:
        """Seconds before the next restart, or None once the restart limit of the window is used up."""
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - self.settings.worker_restart_window_seconds:
            self._restarts.popleft()
        if len(self._restarts) >= self.settings.worker_restart_limit:
            return None
        delay = self.settings.worker_restart_backoff_seconds * 2 ** len(self._restarts)
        self._restarts.append(now)
        return delay

    def _supervise(self) -> None:
        try:
            process = self._spawn()
        finally:
            self._started.set()
        while process is not None:
            returncode = process.wait()
            if self._stopping.is_set():
                return
            kill_worker_group(process)
            delay = self._restart_delay()
            what = f"the worker process {process.pid} {describe_exit(returncode)}"
            if delay is None:
                with self._lock:
                    self._down_reason = (
                        f"{what}; not restarted: it died {self.settings.worker_restart_limit + 1} times within "
                        f"{self.settings.worker_restart_window_seconds:g} s (settings ACTLAB_WORKER_RESTART_LIMIT, "
                        "ACTLAB_WORKER_RESTART_WINDOW_SECONDS); restart `actlab serve`"
                    )
                _say(self._down_reason)
                return
            with self._lock:
                self._down_reason = f"{what}; restarting it in {delay:g} s"
            _say(
                f"{self._down_reason} (restart {len(self._restarts)} of at most {self.settings.worker_restart_limit} "
                f"within {self.settings.worker_restart_window_seconds:g} s)"
            )
            if self._stopping.wait(delay):
                return
            process = self._spawn()
            if process is not None:
                _say(f"worker process {process.pid} trains runs from the queues cpu and gpu (restarted)")
