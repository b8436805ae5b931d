"""The Celery application and every reliability setting of the queue, in one place.

Importing this module is cheap and safe in any process (the API imports it to enqueue):
it imports neither torch nor the training engine, so it can never initialise CUDA in a
parent process that later forks pool children.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from kombu import Exchange, Queue

from app.config import Settings, get_settings

TRAIN_RUNS_TASK = "actlab.train_runs"
CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
QUEUES = (CPU_QUEUE, GPU_QUEUE)
EXCHANGE = Exchange("actlab", type="direct")


def is_embedded_broker(broker_url: str) -> bool:
    """True for the folder-backed broker of the embedded mode."""
    return broker_url.startswith("filesystem://")


def embedded_broker_folders(broker_folder: Path) -> dict[str, Path]:
    """The folders of the embedded broker: one for messages (written and read), control and processed."""
    root = broker_folder.expanduser().resolve()
    return {"messages": root / "messages", "control": root / "control", "processed": root / "processed"}


class _NoHostnameNotice(logging.Filter):
    """Drops kombu's "No hostname was supplied" warning: the folder broker has no host to supply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No hostname was supplied")


_NO_HOSTNAME_NOTICE = _NoHostnameNotice()


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker; creates the embedded broker's folders."""
    if is_embedded_broker(settings.broker_url):
        # Said at every connection of the folder broker, which has no host: noise at every start.
        logging.getLogger("kombu.connection").addFilter(_NO_HOSTNAME_NOTICE)
        folders = embedded_broker_folders(settings.broker_folder)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        # Producers write where consumers read: the API and the worker share one folder.
        return {
            "data_folder_in": str(folders["messages"]),
            "data_folder_out": str(folders["messages"]),
            "control_folder": str(folders["control"]),
            "processed_folder": str(folders["processed"]),
            "store_processed": False,
            # Seconds between looks into the folder: the delay before an idle worker (or a worker process that
            # just finished a task) sees the next one. A look is one directory listing, cheap even every 0.1 s.
            "polling_interval": settings.broker_polling_interval,
        }
    options: dict[str, Any] = {
        # An unacknowledged task goes back to the queue after this long. It must exceed the hard
        # time limit, or Redis hands a run that is still training to a second worker (the settings
        # refuse a shorter one); a crashed worker's run is redelivered after it.
        "visibility_timeout": settings.visibility_timeout,
        # How often a worker sweeps for such expired tasks; every sweep scans, so a crashed
        # worker's run comes back within visibility_timeout + this interval.
        "unacked_restore_interval": settings.broker_restore_interval,
        "unacked_restore_throttle": 1,
    }
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return options


def configure(app: Celery, settings: Settings) -> None:
    """Apply the settings to a Celery app: broker, queues, acknowledgement, limits and serialisation."""
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_transport_options(settings),
        # Workers and the API may start before Redis answers (docker compose): keep trying.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # The database is the source of truth for every result; no result backend.
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # JSON only: a message carries ids, never pickled objects.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Two queues; a worker consumes the ones its machine serves (actlab worker --queues).
        task_queues=[Queue(name, EXCHANGE, routing_key=name) for name in QUEUES],
        task_default_queue=CPU_QUEUE,
        task_default_exchange=EXCHANGE.name,
        task_default_routing_key=CPU_QUEUE,
        task_create_missing_queues=False,
        # Acknowledge after the run, not on receipt: a worker that dies mid-run leaves the task
        # unacknowledged and the broker redelivers it.
        task_acks_late=True,
        # A pool child killed mid-run (OOM killer, segfault) requeues its task instead of dropping it.
        task_reject_on_worker_lost=True,
        # A worker reserves one task at a time: a long run never holds a queue of others hostage.
        worker_prefetch_multiplier=1,
        # Soft limit: the run stops at once and is recorded timed_out with its finished epochs.
        # Hard limit: the pool child is killed if the soft one could not stop it.
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        # Cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT): let runs go on this long,
        # then requeue them; a redelivered run resumes from its last checkpoint.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        # A broker connection lost and regained (a Redis restart) leaves the running runs alone: they
        # write to the database, not the broker, and finish; queued runs the broker lost are sent again
        # by the reconciler (worker/maintenance.py).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        timezone="UTC",
        enable_utc=True,
    )


@setup_logging.connect
def _configure_worker_logging(loglevel: Any = None, **_: Any) -> None:
    """Worker logs in the service's format (text or JSON lines with run ids), at the level the worker was given."""
    import logging

    from app.logging_config import configure_logging

    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else str(loglevel or "").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        settings = settings.model_copy(update={"log_level": level})
    configure_logging(settings)


# worker.maintenance runs the reaper and reconciler in each worker's main process; worker.warm_up warms that process
# before its pool forks, so that every pool process inherits the engine and the warm-up dataset.
celery_app = Celery("actlab", include=["worker.tasks", "worker.maintenance", "worker.warm_up"])
configure(celery_app, get_settings())
