"""Worker liveness: a worker_nodes row refreshed from the moment a worker is ready until it stops.

The API routes device 'auto' to the gpu queue while a GPU worker's row is fresh. The row is
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


def record_heartbeat(*, hostname: str, queues: list[str], device: str, starting: bool = False) -> None:
    """Upsert this worker's row on a short-lived engine of its own, so no pooled connection outlives the call."""
    engine = make_engine()
    try:
        with session_scope(engine) as session:
            upsert_worker_node(session=session, hostname=hostname, queues=queues, device=device, starting=starting)
    finally:
        engine.dispose()


class WorkerHeartbeat:
    """A daemon thread in the worker's main process that records the worker's row periodically."""

    def __init__(self, *, hostname: str, queues: list[str], device: str, interval: float) -> None:
        self.hostname = hostname
        self.queues = queues
        self.device = device
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        """Record the start now, then keep beating in the background."""
        self._beat(starting=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the row simply goes stale)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self, *, starting: bool = False) -> None:
        try:
            record_heartbeat(hostname=self.hostname, queues=self.queues, device=self.device, starting=starting)
        except Exception:
            # The database may be briefly unreachable; the next beat tries again.
            logger.warning("worker heartbeat of %s failed", self.hostname, exc_info=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._beat()


_heartbeat: WorkerHeartbeat | None = None


def _consumed_queues(sender: Any) -> list[str]:
    try:
        return sorted(queue.name for queue in sender.task_consumer.queues)
    except AttributeError:
        return sorted(sender.app.amqp.queues.consume_from)


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    if sender is None:
        return
    _heartbeat = WorkerHeartbeat(
        hostname=str(sender.hostname),
        queues=_consumed_queues(sender),
        device=detect_device(),
        interval=get_settings().worker_heartbeat_seconds,
    )
    logger.info("worker %s ready: queues %s, device %s", _heartbeat.hostname, _heartbeat.queues, _heartbeat.device)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@worker_process_init.connect
def _forget_parent_threads(**_: Any) -> None:
    # A forked pool child inherits the module state but not the thread: it must not try to stop it.
    global _heartbeat
    _heartbeat = None
