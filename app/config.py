"""Settings: one pydantic-settings class, embedded defaults, environment overrides.

Every limit the service enforces is a field here, so an operator can change it with an
environment variable (``ACTLAB_MAX_EPOCHS=1000``) without touching code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SpecLimits(BaseSettings):
    """Bounds on an experiment spec; each one is an environment-overridable setting."""

    model_config = SettingsConfigDict(env_prefix="ACTLAB_", extra="ignore")

    max_epochs: int = Field(200, ge=1, description="Epochs per run.")
    max_batch_size: int = Field(8192, ge=1, description="Mini-batch size.")
    max_width: int = Field(
        4096, ge=1, description="Units in one hidden layer, channels in one conv block, RNN hidden size."
    )
    max_depth: int = Field(32, ge=1, description="Hidden layers of an MLP, conv blocks of a CNN, stacked RNN layers.")
    max_activations: int = Field(32, ge=1, description="Activations in one experiment.")
    max_seeds: int = Field(32, ge=1, description="Seeds in one experiment.")
    max_arms: int = Field(256, ge=1, description="Activations x seeds in one experiment.")
    max_parameters: int = Field(20_000_000, ge=1, description="Estimated trainable parameters of one model.")
    max_cost: float = Field(
        5e15,
        gt=0,
        description="Estimated cost of one experiment: arms x epochs x training examples x parameters.",
    )
    max_expression_length: int = Field(256, ge=1, description="Characters in a custom activation formula.")
    max_learnable_scalars: int = Field(8, ge=0, description="Learnable scalars in one custom activation.")
    max_seed_value: int = Field(2**31 - 1, ge=0, description="Largest accepted seed.")
    max_name_length: int = Field(200, ge=1, description="Characters in an experiment name or activation label.")
    max_dataset_samples: int = Field(1_000_000, ge=1, description="Samples of a synthetic dataset.")


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
    checkpoint_dir: Path = Field(Path(".actlab/checkpoints"), description="Per-run checkpoints for resuming.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest accepted request body.")
    page_size_limit: int = Field(500, ge=1, description="Largest page of a list endpoint.")
    task_soft_time_limit: int = Field(6 * 3600, ge=1, description="Seconds a run may train before it is stopped.")
    task_max_retries: int = Field(5, ge=0, description="Retries of a run after transient failures.")
    gpu_worker_probe_seconds: float = Field(1.0, gt=0, description="How long to wait for GPU workers to answer.")
    torch_threads: int = Field(0, ge=0, description="torch.set_num_threads in workers; 0 leaves torch's default.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
