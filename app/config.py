"""Settings: one pydantic-settings class, embedded defaults, environment overrides.

Every limit the service enforces is a field here, so an operator can change it with an
environment variable (``ACTLAB_MAX_EPOCHS=1000``) without touching code.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actlab.connection import default_credentials_file

# More worker processes than this by default would mostly multiply the memory of in-memory datasets.
_MAX_DEFAULT_WORKER_PROCESSES = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_worker_concurrency() -> int:
    """Worker processes by default: one per available core, at most 8 (bench/RESULTS.md: processes beat threads)."""
    return min(available_cores(), _MAX_DEFAULT_WORKER_PROCESSES)


# Default connection pools (setting database_pool_size): SQLite connections are open files, cheap; each
# PostgreSQL one is a server process, and the API shares the server's max_connections (100) with the workers.
SQLITE_POOL_SIZE = 20
POSTGRES_POOL_SIZE = 10


def default_pool_size(database_url: str) -> int:
    """The pool size of a database when the setting leaves it open: SQLite 20, others (PostgreSQL) 10."""
    return SQLITE_POOL_SIZE if database_url.startswith("sqlite") else POSTGRES_POOL_SIZE


class SpecLimits(BaseSettings):
    """Bounds on an experiment spec; each one is an environment-overridable setting."""

    model_config = SettingsConfigDict(env_prefix="ACTLAB_", extra="ignore")

    max_epochs: int = Field(200, ge=1, description="Epochs per run; with a step budget, evaluations per run.")
    max_steps: int = Field(
        100_000, ge=1, description="Optimiser steps of a step budget (training.steps; 200 epochs of 500 batches)."
    )
    max_batch_size: int = Field(8192, ge=1, description="Mini-batch size.")
    max_width: int = Field(
        4096, ge=1, description="Units in one hidden layer, channels in one conv block, RNN hidden size."
    )
    max_depth: int = Field(32, ge=1, description="Hidden layers of an MLP, conv blocks of a CNN, stacked RNN layers.")
    max_activations: int = Field(32, ge=1, description="Activations in one experiment.")
    max_seeds: int = Field(32, ge=1, description="Seeds in one experiment.")
    max_arms: int = Field(256, ge=1, description="Arms of one experiment: cells x activations x seeds.")
    max_factors: int = Field(6, ge=1, description="Factors (varied spec paths) of one version-2 spec.")
    max_factor_levels: int = Field(8, ge=1, description="Levels of one factor.")
    max_cells: int = Field(64, ge=1, description="Cells (combinations of factor levels) of one experiment.")
    max_parameters: int = Field(20_000_000, ge=1, description="Estimated trainable parameters of one model.")
    max_cost: float = Field(
        5e15,
        gt=0,
        description="Estimated cost of one experiment: arms x (epochs x training examples + the evaluation block's "
        "forward passes over the test set / 3) x parameters, over all cells.",
    )
    # Default: about the 6-hour task time limit of one run at 1e10 MACs/s, what float32 training sustains on a few
    # CPU cores (measured on one core of a loaded 2-core machine, 1 thread, batch 128: 4e9 for an MNIST 784-256-256
    # MLP, 2e9 for a CIFAR-10 16-32 CNN); that MLP for 200 epochs is 1e13, a CIFAR-10 [32, 64, 128] CNN for 50 epochs
    # 8.3e13.
    max_run_macs: float = Field(
        2e14,
        gt=0,
        description="Estimated multiply-accumulates of one run (each arm of each cell): epochs x (3 x training "
        "examples + evaluated examples) x the model's forward MACs per example, counting every convolution "
        "position and recurrent step (app/spec_cost.py). Raise it for GPU workers.",
    )
    # Default: a run's activations fit beside the other worker processes' on an ordinary machine; the CIFAR-10 CNN
    # above needs 256 MiB at batch 128.
    max_run_memory_mb: int = Field(
        8192,
        ge=1,
        description="Estimated activation memory of one run in MiB: the larger of a training batch (batch_size x "
        "every layer's outputs x 4 for autograd) and an evaluation batch of 1024, in float32 (app/spec_cost.py).",
    )
    max_expression_length: int = Field(256, ge=1, description="Characters in a custom activation formula.")
    max_learnable_scalars: int = Field(8, ge=0, description="Learnable scalars in one custom activation.")
    max_seed_value: int = Field(2**31 - 1, ge=0, description="Largest accepted seed.")
    max_name_length: int = Field(200, ge=1, description="Characters in an experiment name or activation label.")
    max_dataset_samples: int = Field(1_000_000, ge=1, description="Samples of a synthetic dataset.")
    max_dataset_transforms: int = Field(8, ge=0, description="Input transforms in one dataset.transforms list.")
    max_evaluation_strengths: int = Field(
        8, ge=0, description="Strengths in each list of the evaluation block (noise_std, fgsm_epsilon, pgd_epsilon)."
    )
    max_evaluation_strength: float = Field(
        10.0,
        gt=0,
        description="Largest noise standard deviation or attack epsilon of the evaluation block, in standardised "
        "input units.",
    )
    max_pgd_steps: int = Field(100, ge=1, description="PGD steps of the evaluation block (evaluation.pgd_steps).")


class Settings(SpecLimits):
    """Service configuration; the defaults give the embedded single-machine mode."""

    database_url: str = Field(
        "sqlite:///./actlab.db",
        validation_alias=AliasChoices("DATABASE_URL", "ACTLAB_DATABASE_URL"),
        description="SQLAlchemy URL; PostgreSQL (postgresql+psycopg://...) in production.",
    )
    broker_url: str = Field(
        "filesystem://",
        validation_alias=AliasChoices("BROKER_URL", "ACTLAB_BROKER_URL"),
        description="Celery broker; Redis (redis://host:6379/0) in production, a folder-backed broker by default.",
    )
    broker_folder: Path = Field(Path(".actlab/broker"), description="Folder of the embedded broker.")
    data_dir: Path = Field(Path("data"), description="Where torchvision datasets live (mnist, fashion_mnist, cifar10).")
    allow_download: bool = Field(False, description="Let torchvision download missing datasets into data_dir.")
    dataset_cache_dir: Path | None = Field(
        None,
        description="Where generated and bundled datasets (mnist1d, spirals, digits, mnist_5k) are cached on disk, "
        "shared by `actlab train` and the workers; default: data_dir/cache.",
    )
    dataset_cache_max_mb: int = Field(
        1024,
        ge=0,
        description="Size of the on-disk dataset cache in MiB; past it the least recently used entries are removed. "
        "0 turns the cache off (every process generates its datasets itself).",
    )
    checkpoint_dir: Path = Field(Path(".actlab/checkpoints"), description="Per-run checkpoints for resuming.")
    checkpoint_interval_seconds: float = Field(
        10.0,
        ge=0,
        description="Least seconds between a run's checkpoints (written after an epoch once this much time has "
        "passed, and always when a run is cancelled before its end); a crash loses at most this much training. 0: after "
        "every epoch.",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest accepted request body.")
    max_import_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest accepted archive upload (POST /v1/experiments/import)."
    )
    max_import_uncompressed_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest size an imported archive's members may expand to (zip bombs)."
    )
    max_import_rows: int = Field(
        500_000,
        ge=1,
        description="Most metric rows (metrics.csv plus layer_metrics.csv) one import may hold; a larger archive is a "
        "422 (500,000 keep an import's peak memory near 100 MiB, bench/import_memory.py). Below this, the "
        "archive's own spec bounds it (runs x epochs, x layers of the model for layer rows).",
    )
    import_batch_rows: int = Field(
        5_000,
        ge=1,
        description="Metric rows an import writes per transaction; each batch commits, so on SQLite a worker's "
        "heartbeat can write between batches.",
    )
    export_batch_rows: int = Field(
        2_000,
        ge=1,
        description="Rows a CSV or Parquet metric download reads per database round trip and encodes per batch: "
        "larger batches encode a little faster, smaller ones keep the peak memory down (20-35 MB above idle at "
        "2,000 rows, about 50 MB at 10,000; bench/export.py).",
    )
    parquet_row_group_rows: int = Field(
        20_000,
        ge=1,
        description="Rows per row group of a Parquet metric download: larger groups compress and read better, but one "
        "is held while it is encoded (about 20 MB above idle at 20,000 rows, 55 MB at 50,000; bench/export.py).",
    )
    page_size_limit: int = Field(500, ge=1, description="Largest page of a list endpoint.")
    max_compare_experiments: int = Field(
        8, ge=2, description="Experiments one comparison (GET /v1/compare, the /compare page) may name."
    )
    results_cache_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Largest result response (results tables, diagnostics, plots) the results cache stores for a "
        "finished experiment; larger ones are computed on every request. 0 turns the cache off.",
    )
    task_soft_time_limit: int = Field(6 * 3600, ge=1, description="Seconds a run may train before it is stopped.")
    task_max_retries: int = Field(5, ge=0, description="Retries of a run after transient failures.")
    gpu_worker_probe_seconds: float = Field(1.0, gt=0, description="How long to wait for GPU workers to answer.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch.set_num_threads in each worker process; 0: the available cores shared out among the "
        "worker's processes (1 each when there are as many processes as cores), torch's default for one process.",
    )
    # Queue and worker reliability (worker/celery_app.py applies them; see the comments there).
    task_time_limit_grace: int = Field(
        300, ge=1, description="Seconds after the soft time limit before a stuck run's process is killed."
    )
    broker_visibility_timeout: int | None = Field(
        None,
        ge=1,
        description="Redis: seconds before an unacknowledged task is redelivered; must exceed the hard time limit "
        "(default: hard time limit + 1 hour).",
    )
    broker_restore_interval: int = Field(
        10, ge=1, description="Redis: seconds between a worker's sweeps for unacknowledged tasks to redeliver."
    )
    broker_key_prefix: str = Field("", description="Redis: prefix of every broker key, to share one Redis safely.")
    task_retry_backoff: int = Field(2, ge=1, description="Seconds before the first retry after a transient error.")
    task_retry_backoff_max: int = Field(300, ge=1, description="Longest wait between retries after transient errors.")
    worker_warm_up_dataset: str = Field(
        "mnist1d",
        max_length=40,
        description="Dataset the worker loads at its start, in its main process before the pool forks, with the "
        "engine's modules and torch's lazily imported optimiser parts, so every pool process inherits them "
        "(worker/warm_up.py); on by default because the first experiment after `actlab serve` otherwise pays "
        "them in each pool process (bench/RESULTS.md, Cold workers); empty: no warm-up.",
    )
    worker_concurrency: int = Field(
        default_factory=default_worker_concurrency,
        ge=1,
        description="Processes of one worker, each training its own runs (default: one per available CPU core, at most "
        "8; GPU workers: 1).",
    )
    # Stacked training of an experiment's runs (worker/stacked_runner.py; bench/RESULTS.md).
    stack_runs: bool = Field(
        True,
        description="Train runs of one experiment together as one stacked model where the engine recommends it "
        "(small MLPs on a CPU, mlp and cnn models on a GPU); off: one run at a time.",
    )
    stack_chunk_runs: int = Field(
        0,
        ge=0,
        description="Most runs one worker process trains as one stack; 0: on a GPU every unfinished run of the "
        "experiment, on a CPU those runs divided among stack_worker_processes (rounded up).",
    )
    stack_worker_processes: int = Field(
        0,
        ge=0,
        description="Worker processes (on all machines) expected to share an experiment's runs on CPUs, for the "
        "default chunk size; 0: this worker's processes.",
    )
    stack_memory_budget_mb: int = Field(
        0,
        ge=0,
        description="Memory one stack may use, in MiB; 0: 80% of the GPU's free memory, or on a CPU half the "
        "machine's memory shared out among the worker's processes.",
    )
    broker_polling_interval: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Embedded (folder) broker: seconds between a worker's looks for new tasks when it has none.",
    )
    worker_heartbeat_seconds: float = Field(30.0, gt=0, description="Seconds between a worker's liveness records.")
    worker_fresh_seconds: float = Field(
        120.0,
        gt=0,
        description="A worker seen within this many seconds counts as alive (device 'auto' routing, the /readyz of "
        "`actlab serve`).",
    )
    run_heartbeat_seconds: float = Field(30.0, gt=0, description="Seconds between heartbeats of a running run.")
    run_stale_seconds: float = Field(
        600.0, gt=0, description="A running run whose heartbeat is older than this is taken over by a new delivery."
    )
    worker_soft_shutdown_timeout: float = Field(
        20.0, ge=0, description="On a cold shutdown, seconds a worker lets its runs go on before requeueing them."
    )
    # The worker of `actlab serve` (app/cli/supervisor.py, worker/parent_watch.py; docs/reliability.md).
    worker_restart_limit: int = Field(
        5,
        ge=0,
        description="`actlab serve`: restarts of its dead worker within worker_restart_window_seconds; past it the "
        "worker stays down and /readyz answers 503 until the service is restarted. 0: never restart.",
    )
    worker_restart_window_seconds: float = Field(
        600.0, gt=0, description="`actlab serve`: the window, in seconds, that worker_restart_limit counts restarts in."
    )
    worker_restart_backoff_seconds: float = Field(
        1.0,
        gt=0,
        description="`actlab serve`: seconds before the first restart of a dead worker, doubled for each further "
        "restart within the window.",
    )
    worker_parent_watch_seconds: float = Field(
        1.0,
        gt=0,
        description="A worker started by `actlab serve`: seconds between its checks that the service is still its "
        "parent; once it is not, the worker and its pool exit at once (on Linux the kernel's parent-death signal "
        "does so immediately).",
    )
    # Self-healing (worker/maintenance.py, worker/db_retry.py; docs/reliability.md).
    maintenance_interval_seconds: float = Field(
        60.0,
        ge=0,
        description="Seconds between a worker's maintenance passes (requeue runs with a stale heartbeat, re-enqueue "
        "queued runs the broker lost); 0 turns them off (`actlab maintain` still runs one).",
    )
    queued_grace_seconds: float = Field(
        60.0,
        gt=0,
        description="A queued run whose task the broker does not hold, or that was never enqueued, is sent again "
        "once it has waited this long.",
    )
    database_retry_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a worker keeps retrying a metric or status write while the database is unreachable "
        "before the task's retry (and checkpoint resume) takes over; 0 leaves it to the task.",
    )
    # Results statistics (app/results/verdicts.py, power.py, failures.py; docs/statistics.md).
    equivalence_margin: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Equivalence margin of accuracy metrics when the caller gives none: a paired difference shown "
        "inside plus or minus this (TOST) is 'equivalent'; loss metrics are tested only with a margin given.",
    )
    chance_margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="An activation did not train when its mean final test accuracy is at most chance (always "
        "predicting the most frequent training class) plus this.",
    )
    seeds_power: float = Field(
        0.8, gt=0, lt=1, description="Power that seeds_needed and seeds_needed_equivalence are computed for."
    )
    # Database connections and long responses of the API (app/db.py, app/streaming.py; docs/reliability.md).
    database_pool_size: int | None = Field(
        None,
        ge=1,
        description="Connections one API or worker process keeps in its pool; default 20 on SQLite, 10 on PostgreSQL "
        "(each PostgreSQL connection is a server process; mind the server's max_connections).",
    )
    database_max_overflow: int = Field(
        10, ge=0, description="Connections opened beyond the pool under load, closed again once returned."
    )
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite's PRAGMA synchronous (WAL mode): 'normal' syncs the log only at its checkpoints, so a "
        "commit costs no fsync (the database stays consistent; a power loss or OS crash may undo the last commits, "
        "a crash of the service itself never does); 'full' syncs every commit. PostgreSQL is not affected.",
    )
    database_pool_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request waits for a free connection; then it is answered 503 with Retry-After.",
    )
    max_streaming_downloads: int | None = Field(
        None,
        ge=1,
        description="Metric and layer-metric downloads streamed at once, one connection each; more are answered 503 "
        "with Retry-After before anything is sent. Default: half the pool (10 on SQLite, 5 on PostgreSQL).",
    )
    max_event_streams: int = Field(
        100, ge=1, description="Server-sent event streams open at once; more are answered 503 with Retry-After."
    )
    event_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Seconds between an event stream's database polls: how late a client at most learns of a new "
        "epoch or the end; each open stream costs one small query per interval.",
    )
    event_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="An event stream with nothing to send writes a comment line after this many seconds, so that "
        "proxies and clients do not take a quiet stream for a dead one.",
    )
    event_poll_concurrency: int | None = Field(
        None,
        ge=1,
        description="Event streams reading the database at the same moment, one connection each, the others waiting "
        "their turn; default: a quarter of the pool (5 on SQLite, 2 on PostgreSQL).",
    )
    stream_retry_after_seconds: int = Field(
        5,
        ge=1,
        description="The Retry-After of a download or event stream refused over its limit, and of a 503 "
        "when no database connection came free.",
    )
    # Authentication, quotas and operations (app/auth, app/quotas, app/monitoring, app/logging_config.py).
    auth_required: bool = Field(
        True,
        description="Require an API key (Authorization: Bearer KEY) on every /v1 route and report page; "
        "off is refused on any interface but loopback.",
    )
    credentials_file: Path = Field(
        default_factory=lambda: default_credentials_file(),
        description="Where `actlab serve` keeps the local admin key for the CLI (permissions 0600).",
    )
    max_active_arms_per_owner: int = Field(
        1024, ge=0, description="Queued and running arms one API key may have at once; 0 means no cap."
    )
    max_submissions_per_minute: int = Field(
        60, ge=0, description="Experiments one API key may submit in any 60 seconds; 0 means no cap."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as one JSON object each.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level logged.")

    @property
    def dataset_cache_path(self) -> Path:
        """The on-disk dataset cache in force: the setting, or data_dir/cache."""
        return self.dataset_cache_dir if self.dataset_cache_dir is not None else self.data_dir / "cache"

    @property
    def pool_size(self) -> int:
        """The connection pool size in force: the setting, or the default of the database's kind."""
        return self.database_pool_size or default_pool_size(self.database_url)

    @property
    def download_limit(self) -> int:
        """Streaming downloads admitted at once: the setting, or half the pool."""
        return self.max_streaming_downloads or max(1, self.pool_size // 2)

    @property
    def event_poll_limit(self) -> int:
        """Event-stream database polls at once: the setting, or a quarter of the pool."""
        return self.event_poll_concurrency or max(1, self.pool_size // 4)

    @property
    def task_time_limit(self) -> int:
        """The hard time limit of a task in seconds: the soft limit plus the grace period."""
        return self.task_soft_time_limit + self.task_time_limit_grace

    @property
    def visibility_timeout(self) -> int:
        """The broker visibility timeout in force: the setting, or the hard limit plus an hour."""
        return self.broker_visibility_timeout or self.task_time_limit + 3600

    @field_validator("worker_warm_up_dataset")
    @classmethod
    def _warm_up_dataset_is_known(cls, name: str) -> str:
        from app.catalog_datasets import DATASETS

        if name and name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}, or empty for no warm-up")
        return name

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit(self) -> Settings:
        # A shorter visibility timeout makes Redis hand a still-running task to a second worker.
        if self.broker_visibility_timeout is not None and self.broker_visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"broker_visibility_timeout ({self.broker_visibility_timeout} s) must exceed the hard time limit "
                f"task_soft_time_limit + task_time_limit_grace ({self.task_time_limit} s)"
            )
        # Streams hold their connection for as long as they run: they must leave connections for everything else.
        streams = self.download_limit + self.event_poll_limit
        if streams >= self.pool_size + self.database_max_overflow:
            raise ValueError(
                f"max_streaming_downloads ({self.download_limit}) + event_poll_concurrency ({self.event_poll_limit}) "
                f"must stay below database_pool_size + database_max_overflow "
                f"({self.pool_size} + {self.database_max_overflow}), leaving connections for other requests"
            )
        # A stale limit within one heartbeat interval would make the reaper requeue healthy runs.
        if self.run_stale_seconds <= self.run_heartbeat_seconds:
            raise ValueError(
                f"run_stale_seconds ({self.run_stale_seconds} s) must exceed run_heartbeat_seconds "
                f"({self.run_heartbeat_seconds} s)"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
