"""``actlab serve`` (embedded service), ``actlab worker`` (a Celery worker) and ``actlab migrate``.

Embedded mode, the default with no environment set: a SQLite file and a folder-backed
broker in the working directory, one worker child process and the API in this process.
Production: DATABASE_URL and BROKER_URL from the environment, ``actlab migrate`` once,
then the API (uvicorn) and any number of ``actlab worker --queues cpu|gpu`` anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.cli.supervisor import EmbeddedWorker
    from app.config import Settings

QUEUE_NAMES = ("cpu", "gpu")


def register(subparsers: Any) -> None:
    """Add the serve, worker and migrate subcommands."""
    serve_parser = subparsers.add_parser(
        "serve",
        help="start the embedded service: API, SQLite database and one worker (no other setup needed)",
        description="Start the API and one worker process on this machine. With no DATABASE_URL/BROKER_URL set, "
        "it keeps everything in the working directory: ./actlab.db and .actlab/.",
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve_parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="runs the worker trains at once (default: ACTLAB_WORKER_CONCURRENCY)",
    )
    serve_parser.add_argument("--no-worker", action="store_true", help="serve the API only; start workers yourself")
    serve_parser.add_argument("--loglevel", default="info", choices=("debug", "info", "warning", "error"))
    serve_parser.set_defaults(handler=serve)

    worker_parser = subparsers.add_parser(
        "worker",
        help="run a Celery worker that trains runs from the given queues",
        description="Run a worker. In production set DATABASE_URL and BROKER_URL (redis://...) first.",
    )
    worker_parser.add_argument(
        "--queues", default="cpu", type=parse_queues, help="queues to consume: cpu, gpu or cpu,gpu (default cpu)"
    )
    worker_parser.add_argument(
        "--concurrency", type=int, default=None, help="runs trained at once (default: ACTLAB_WORKER_CONCURRENCY)"
    )
    worker_parser.add_argument("--hostname", default=None, help="worker node name (default actlab-QUEUES@HOST)")
    worker_parser.add_argument(
        "--soft-shutdown-timeout",
        type=float,
        default=None,
        help="seconds running runs may go on after SIGTERM before they are requeued "
        "(default: ACTLAB_WORKER_SOFT_SHUTDOWN_TIMEOUT)",
    )
    worker_parser.add_argument(
        "--loglevel", default=None, choices=("debug", "info", "warning", "error"), help="default: ACTLAB_LOG_LEVEL"
    )
    worker_parser.set_defaults(handler=run_worker)

    migrate_parser = subparsers.add_parser("migrate", help="create or upgrade the database schema")
    migrate_parser.set_defaults(handler=migrate)


def parse_queues(text: str) -> list[str]:
    """'cpu', 'gpu' or 'cpu,gpu' as a list; anything else is a usage error naming the allowed queues."""
    queues = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [queue for queue in queues if queue not in QUEUE_NAMES]
    if not queues or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue {', '.join(map(repr, unknown)) or repr(text)}; allowed: {', '.join(QUEUE_NAMES)}"
        )
    return list(dict.fromkeys(queues))


def migrate(_arguments: argparse.Namespace) -> int:
    """Run the Alembic migrations against the configured database."""
    from app.config import get_settings
    from app.migrate import upgrade_database

    upgrade_database()
    print(f"database is up to date: {_display_url(get_settings().database_url)}")
    return 0


def _display_url(url: str) -> str:
    """The URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def run_worker(arguments: argparse.Namespace) -> int:
    """Run a Celery worker in this process; the process exits with its status when the worker stops."""
    # SIGTERM (docker stop, systemd) means a cold shutdown: running runs get the soft-shutdown
    # time, then go back to the queue at once instead of waiting for the visibility timeout.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    from celery.exceptions import SecurityWarning

    from app.config import get_settings
    from worker.celery_app import celery_app
    from worker.parent_watch import watch_parent

    # Started by `actlab serve`: exit within seconds should the service die (worker/parent_watch.py).
    if watch_parent():
        # Celery warns when a worker runs as root because a pickle-accepting worker would run whatever a
        # broker peer sends. This one is the user's own child on a private folder broker and accepts JSON
        # only (worker/celery_app.py), so the warning says nothing here; a stand-alone worker keeps it.
        warnings.filterwarnings("ignore", category=SecurityWarning)

    settings = get_settings()
    queues: list[str] = arguments.queues
    concurrency = arguments.concurrency or settings.worker_concurrency
    if concurrency < 1:
        print("actlab worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    hostname = arguments.hostname or f"actlab-{'-'.join(queues)}@%h"
    argv = [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        f"--loglevel={(arguments.loglevel or settings.log_level).upper()}",
        f"--hostname={hostname}",
        "--pool=prefork",
        # Neither is needed (no revokes to sync, no peers to watch) and both slow the start down.
        "--without-mingle",
        "--without-gossip",
    ]
    if arguments.soft_shutdown_timeout is not None:
        celery_app.conf.worker_soft_shutdown_timeout = max(0.0, arguments.soft_shutdown_timeout)
    status = 0
    try:
        celery_app.worker_main(argv)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    # The pool is stopped and unacknowledged tasks are back on the broker by now. Leave without
    # multiprocessing's exit finalizers: after a pool child was terminated in the middle of torch
    # work they can wait forever on a queue lock (billiard), which would hang every cold shutdown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@contextlib.contextmanager
def _single_instance(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the folder's serve.lock; yields False when another service holds it."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "serve.lock").open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def rebuild_embedded_queue() -> int:
    """Refill the embedded broker from the database; returns the number of runs queued.

    The database is the source of truth. When the embedded service starts its worker, or
    restarts it after it died (app/cli/supervisor.py), no worker can be running, so runs left
    'running' by a previous stop or crash go back to the queue (and resume from their
    checkpoints), and every queued run gets exactly one message.
    """
    from app.config import get_settings
    from app.db import session_scope
    from app.dispatch import enqueue_runs
    from app.experiments.service import refresh_experiment_status
    from app.runs.state_repository import requeue_orphaned_runs
    from worker.celery_app import embedded_broker_folders

    folders = embedded_broker_folders(get_settings().broker_folder)
    for message in folders["messages"].glob("*.msg"):
        message.unlink(missing_ok=True)
    with session_scope() as session:
        pending = requeue_orphaned_runs(session=session)
        for experiment_id in {experiment_id for _, experiment_id, _ in pending}:
            refresh_experiment_status(session=session, experiment_id=experiment_id)
    by_queue: dict[str, list[uuid.UUID]] = {}
    for run_id, _, queue in pending:
        by_queue.setdefault(queue, []).append(run_id)
    for queue, run_ids in by_queue.items():
        enqueue_runs(run_ids=run_ids, queue=queue)
    return len(pending)


def _requeue_unfinished_runs() -> None:
    """Before the embedded worker starts or restarts: rebuild the queue from the database, and say so."""
    requeued = rebuild_embedded_queue()
    if requeued:
        print(f"re-queued {requeued} unfinished run(s) from the database", flush=True)


def _announce_local_key(*, settings: Any, url: str) -> None:
    """On a loopback address, make sure the CLI has a working admin key for this service, and say where it is."""
    from app.auth.local import ensure_local_key
    from app.db import session_scope

    with session_scope() as session:
        created = ensure_local_key(settings=settings, session=session, url=url)
    if created is not None:
        print(f"created a local admin API key: {created}", flush=True)
        print(f"  saved in {settings.credentials_file}; the actlab CLI uses it for {url}", flush=True)
    elif settings.auth_required:
        print(f"API keys: send 'Authorization: Bearer KEY' (the actlab CLI reads {settings.credentials_file})")


def _port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (checked before a worker is started for nothing)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError:
        return False
    return True


def serve(arguments: argparse.Namespace) -> int:
    """Migrate, start the supervised worker, serve the API until Ctrl-C or SIGTERM, then stop the worker."""
    from app.auth.service import AuthExposureError, check_auth_exposure
    from app.cli.supervisor import EmbeddedWorker
    from app.config import get_settings
    from app.migrate import upgrade_database
    from worker.celery_app import is_embedded_broker

    settings = get_settings()
    embedded = is_embedded_broker(settings.broker_url)
    try:
        check_auth_exposure(settings=settings, host=arguments.host)
    except AuthExposureError as error:
        print(f"actlab serve: {error}", file=sys.stderr)
        return 2
    if not _port_is_free(arguments.host, arguments.port):
        print(
            f"actlab serve: port {arguments.port} on {arguments.host} is in use; choose another with --port",
            file=sys.stderr,
        )
        return 1
    with _single_instance(Path(settings.broker_folder).expanduser().resolve()) as alone:
        if not alone:
            print(
                f"actlab serve: another `actlab serve` already uses {settings.broker_folder}; "
                "stop it first or run this one from another directory",
                file=sys.stderr,
            )
            return 1
        upgrade_database()
        worker: EmbeddedWorker | None = None
        if not arguments.no_worker:
            # Started before the API's modules are imported (tens of seconds on a loaded machine): the worker's
            # start and warm-up (worker/warm_up.py) overlap them instead of following them.
            worker = EmbeddedWorker(
                settings=settings,
                concurrency=arguments.concurrency or settings.worker_concurrency,
                loglevel=arguments.loglevel,
                # No worker runs before this one starts, nor after it died: the database says what to train.
                before_start=_requeue_unfinished_runs if embedded else None,
            )
            print(f"worker process {worker.start()} trains runs from the queues cpu and gpu", flush=True)
        # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again with the handler it
        # found: make that a KeyboardInterrupt for SIGTERM too, so the worker below is stopped in every case.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            _serve_api(arguments, settings=settings, worker=worker)
        except KeyboardInterrupt:
            pass
        finally:
            if worker is not None:
                print("stopping the worker (running runs go back to the queue)...", flush=True)
                worker.stop()
    return 0


def _serve_api(arguments: argparse.Namespace, *, settings: Settings, worker: EmbeddedWorker | None) -> None:
    """Create the API (its /readyz asks ``worker``, the embedded worker or None) and serve it until stopped."""
    import uvicorn

    from app.main import create_app

    url = f"http://{arguments.host}:{arguments.port}"
    _announce_local_key(settings=settings, url=url)
    app = create_app(settings)
    if worker is not None:
        # /readyz answers 503 while this worker is down (app/meta/router.py).
        app.state.worker_supervisor = worker
    print(f"Activation Lab is starting at {url}  (API docs: {url}/docs)", flush=True)
    print(f"database: {_display_url(settings.database_url)}  broker: {settings.broker_url}", flush=True)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level=arguments.loglevel)
