"""ORM tables; importing this package registers every table on Base.metadata."""

from app.models.api_key import ApiKey
from app.models.epoch_metric import EpochMetric
from app.models.experiment import Experiment
from app.models.layer_metric import LayerMetric
from app.models.result_cache import ResultCacheEntry
from app.models.robustness import RobustnessResult
from app.models.run import Run
from app.models.seed_extension import SeedExtension
from app.models.status import ExperimentStatus, RunStatus
from app.models.worker_node import WorkerNode

__all__ = [
    "ApiKey",
    "EpochMetric",
    "Experiment",
    "ExperimentStatus",
    "LayerMetric",
    "ResultCacheEntry",
    "RobustnessResult",
    "Run",
    "RunStatus",
    "SeedExtension",
    "WorkerNode",
]
