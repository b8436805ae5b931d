"""Prometheus metrics of one app: requests and latencies, queue depth, runs by status, epoch durations.

Each app has its own registry (tests stay independent, and two apps in one process never
share counters). Request counters are updated by the middleware; everything else is read
when Prometheus scrapes:

- ``actlab_runs`` / ``actlab_experiments`` by status and ``actlab_workers_alive`` by queue,
  counted in SQL by a custom collector;
- ``actlab_queue_depth`` by queue: LLEN of the Redis lists (with the key prefix setting), or
  the message files of the embedded folder broker;
- ``actlab_epoch_duration_seconds``, a histogram fed from the epoch rows the workers stored
  since the previous scrape (workers serve no HTTP, so the API reads their epochs from the
  database). Like any Prometheus counter it starts at the app's first scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.dispatch import CPU_QUEUE, GPU_QUEUE
from app.models import ExperimentStatus, RunStatus
from app.models.types import utc_now
from app.monitoring import repository
from app.workers.repository import workers_seen_since

logger = logging.getLogger(__name__)

QUEUE_NAMES = (CPU_QUEUE, GPU_QUEUE)
REQUEST_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EPOCH_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Epoch rows read per scrape at most: a backlog is worked off over several scrapes, never in one slow one.
EPOCH_ROWS_PER_SCRAPE = 20_000
# Kombu's Redis transport keeps messages of priority n>0 in "<queue>\x06\x16<n>"; 0 is the queue itself.
_REDIS_PRIORITY_SEPARATOR = "\x06\x16"
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
_BROKER_TIMEOUT_SECONDS = 1.0


def filesystem_queue_depths(messages_folder: Path) -> dict[str, int]:
    """Messages waiting per queue in the folder broker (files named ``<time>_<id>.<queue>.msg``)."""
    depths = dict.fromkeys(QUEUE_NAMES, 0)
    try:
        names = [entry.name for entry in messages_folder.iterdir()]
    except FileNotFoundError:
        return depths
    for name in names:
        queue = name.partition(".")[2].removesuffix(".msg")
        if name.endswith(".msg") and queue in depths:
            depths[queue] += 1
    return depths


def redis_queue_depths(client: Any, *, key_prefix: str) -> dict[str, int]:
    """Messages waiting per queue in Redis: the lengths of the queue's lists, every priority included."""
    depths = {}
    for queue in QUEUE_NAMES:
        keys = [
            f"{key_prefix}{queue}" if step == 0 else f"{key_prefix}{queue}{_REDIS_PRIORITY_SEPARATOR}{step}"
            for step in _REDIS_PRIORITY_STEPS
        ]
        pipeline = client.pipeline()
        for key in keys:
            pipeline.llen(key)
        depths[queue] = int(sum(pipeline.execute()))
    return depths


class ServiceMetrics:
    """The registry of one app, its request metrics and its scrape-time collectors."""

    def __init__(self, *, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "actlab_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "actlab_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response started), by method and route template.",
            ["method", "route"],
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.epoch_seconds = Histogram(
            "actlab_epoch_duration_seconds",
            "Wall-clock seconds of one training epoch, by queue, from the epochs workers stored.",
            ["queue"],
            buckets=EPOCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))
        self._epoch_watermark: int | None = None
        self._epoch_lock = threading.Lock()
        self._redis_client: Any = None

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(method=method, route=route, status=str(status)).inc()
        self.request_seconds.labels(method=method, route=route).observe(seconds)

    def observe_epoch(self, *, seconds: float, queue: str | None) -> None:
        """Record the duration of one epoch (what the scrape does for each newly stored epoch row)."""
        self.epoch_seconds.labels(queue=queue or "unknown").observe(seconds)

    def ingest_new_epochs(self) -> int:
        """Feed the epoch histogram from rows stored since the last call; the first call only sets the mark."""
        with self._epoch_lock, self.session_factory() as session:
            if self._epoch_watermark is None:
                self._epoch_watermark = repository.latest_epoch_metric_id(session=session)
                return 0
            rows = repository.epoch_seconds_after(
                session=session, after_id=self._epoch_watermark, limit=EPOCH_ROWS_PER_SCRAPE
            )
            for row_id, seconds, queue in rows:
                self._epoch_watermark = row_id
                if seconds is not None and seconds >= 0:
                    self.observe_epoch(seconds=seconds, queue=queue)
            return len(rows)

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue on the configured broker (empty for brokers it cannot inspect)."""
        url = self.settings.broker_url
        scheme = url.split("://", 1)[0].lower()
        if scheme == "filesystem":
            from worker.celery_app import embedded_broker_folders

            return filesystem_queue_depths(embedded_broker_folders(self.settings.broker_folder)["messages"])
        if scheme in ("redis", "rediss"):
            if self._redis_client is None:
                import redis

                self._redis_client = redis.Redis.from_url(
                    url, socket_connect_timeout=_BROKER_TIMEOUT_SECONDS, socket_timeout=_BROKER_TIMEOUT_SECONDS
                )
            return redis_queue_depths(self._redis_client, key_prefix=self.settings.broker_key_prefix)
        return {}

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        try:
            self.ingest_new_epochs()
        except Exception as error:
            # The state collector reports the database as down; the request metrics still go out.
            logger.warning("could not read new epochs for the metrics: %s", error)
        return generate_latest(self.registry)

    def close(self) -> None:
        """Release the broker connection, if one was opened."""
        if self._redis_client is not None:
            self._redis_client.close()
            self._redis_client = None


class _StateCollector:
    """Scrape-time gauges read from the database and the broker."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        """The families this collector yields (so registering it reads nothing)."""
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("actlab_runs", "Runs by status.", labels=["status"])
        yield GaugeMetricFamily("actlab_experiments", "Experiments by status.", labels=["status"])
        yield GaugeMetricFamily("actlab_workers_alive", "Workers with a fresh heartbeat, by queue.", labels=["queue"])
        yield GaugeMetricFamily("actlab_queue_depth", "Tasks waiting in the broker, by queue.", labels=["queue"])
        yield GaugeMetricFamily(
            "actlab_scrape_source_up", "1 if the source answered this scrape, else 0.", labels=["source"]
        )

    def collect(self) -> Iterable[Metric]:
        """Read the gauges now; a source that does not answer is reported down instead of failing the scrape."""
        runs, experiments, workers, queues, up = self._families()
        database_ok = True
        try:
            with self.metrics.session_factory() as session:
                run_counts = repository.count_runs_by_status(session=session)
                experiment_counts = repository.count_experiments_by_status(session=session)
                since = utc_now() - timedelta(seconds=self.metrics.settings.worker_fresh_seconds)
                alive = workers_seen_since(session=session, since=since)
        except Exception as error:
            logger.warning("metrics scrape could not read the database: %s", error)
            database_ok = False
        if database_ok:
            for status in RunStatus:
                runs.add_metric([str(status)], run_counts.get(str(status), 0))
            for experiment_status in ExperimentStatus:
                experiments.add_metric([str(experiment_status)], experiment_counts.get(str(experiment_status), 0))
            for queue in QUEUE_NAMES:
                workers.add_metric([queue], sum(1 for node in alive if queue in (node.queues or [])))
            yield runs
            yield experiments
            yield workers
        broker_ok = True
        try:
            depths = self.metrics.queue_depths()
        except Exception as error:
            logger.warning("metrics scrape could not read the broker: %s", error)
            broker_ok = False
            depths = {}
        for queue, depth in depths.items():
            queues.add_metric([queue], depth)
        if depths:
            yield queues
        up.add_metric(["database"], 1 if database_ok else 0)
        up.add_metric(["broker"], 1 if broker_ok else 0)
        yield up
