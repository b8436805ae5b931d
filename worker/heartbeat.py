"""Worker liveness: a worker_nodes row refreshed from the moment a worker is ready until it stops.

This says that a worker is alive; it is not a run's heartbeat (``runs.heartbeat_at``, refreshed
while the run trains by the run heartbeats of worker/lifecycle.py and read by the reaper).

The API routes device 'auto' to the gpu queue while a GPU worker's row is fresh, and the /readyz
of `actlab serve` waits for its worker's row to be written after that worker's start
(app/cli/supervisor.py). The row is
written from the worker's main process, which must never initialise CUDA (its pool
children are forked from it), so the GPU is detected with ``nvidia-smi`` in a subprocess
instead of torch: ``torch.cuda.is_available()`` initialises the CUDA driver in the calling
process, and a child forked after that cannot use CUDA.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.config import get_settings
from app.db import make_engine, session_scope
from app.workers.repository import upsert_worker_node

logger = logging.getLogger(__name__)

# worker_nodes.device holds at most this many characters.
_DEVICE_LENGTH = 40


def detect_device() -> str:
    """'cuda:<GPU name>' when nvidia-smi lists a visible GPU, else 'cpu'; never touches CUDA in this process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return "cpu"
    try:
        completed = subprocess.run(
            [executable, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    names = [line.strip() for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not names:
        return "cpu"
    return f"cuda:{names[0]}"[:_DEVICE_LENGTH]


def record_worker_alive(*, hostname: str, queues: list[str], device: str, starting: bool = False) -> None:
    """Upsert this worker's liveness row on a short-lived engine of its own, so no pooled connection outlives it."""
    engine = make_engine()
    try:
        with session_scope(engine) as session:
            upsert_worker_node(session=session, hostname=hostname, queues=queues, device=device, starting=starting)
    finally:
        engine.dispose()


class WorkerLiveness:
    """A daemon thread in the worker's main process that records the worker's liveness row periodically."""

    def __init__(self, *, hostname: str, queues: list[str], device: str, interval: float) -> None:
        self.hostname = hostname
        self.queues = queues
        self.device = device
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-liveness", daemon=True)

    def start(self) -> None:
        """Record the start now, then keep recording in the background."""
        self._record(starting=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop recording (the row simply goes stale)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _record(self, *, starting: bool = False) -> None:
        try:
            record_worker_alive(hostname=self.hostname, queues=self.queues, device=self.device, starting=starting)
        except Exception:
            # The database may be briefly unreachable; the next record tries again.
            logger.warning("worker liveness record of %s failed", self.hostname, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._record()


_liveness: WorkerLiveness | None = None


def _consumed_queues(sender: Any) -> list[str]:
    try:
        return sorted(queue.name for queue in sender.task_consumer.queues)
    except AttributeError:
        return sorted(sender.app.amqp.queues.consume_from)


@worker_ready.connect
def _start_liveness(sender: Any = None, **_: Any) -> None:
    global _liveness
    if sender is None:
        return
    _liveness = WorkerLiveness(
        hostname=str(sender.hostname),
        queues=_consumed_queues(sender),
        device=detect_device(),
        interval=get_settings().worker_heartbeat_seconds,
    )
    logger.info("worker %s ready: queues %s, device %s", _liveness.hostname, _liveness.queues, _liveness.device)
    _liveness.start()


@worker_shutdown.connect
def _stop_liveness(**_: Any) -> None:
    if _liveness is not None:
        _liveness.stop()


@worker_process_init.connect
def _forget_parent_threads(**_: Any) -> None:
    # A forked pool child inherits the module state but not the thread: it must not try to stop it.
    global _liveness
    _liveness = None
