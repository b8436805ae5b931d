"""Shared pieces of the benchmarks: specs, random data of a real dataset's shape, timing, machine facts."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from app.spec import ExperimentSpec
from worker.training.datasets import DatasetSplits

# Five activations of different cost: the mixed grid of the reference measurement.
MIXED_ACTIVATIONS: list[Any] = [
    "relu",
    "tanh",
    {"name": "leaky_relu", "params": {"negative_slope": 0.1}},
    "elu",
    "gelu",
]


@dataclass(frozen=True)
class Workload:
    """A model on data of one real dataset's shape."""

    name: str
    dataset: str
    model: dict[str, Any]
    input_shape: tuple[int, ...]
    classes: int
    # Training examples by device type: a full epoch on a GPU, a slice of one on a CPU.
    examples: dict[str, int]


WORKLOADS = {
    "mlp": Workload(
        "mlp",
        "mnist",
        {"kind": "mlp", "hidden": [256, 256]},
        (1, 28, 28),
        10,
        {"cuda": 60_000, "cpu": 6_000},
    ),
    "cnn": Workload(
        "cnn",
        "cifar10",
        {"kind": "cnn", "channels": [16, 32], "kernel_size": 3, "pooling": "max"},
        (3, 32, 32),
        10,
        {"cuda": 50_000, "cpu": 500},
    ),
}


def grid_spec(workload: Workload, *, arms: int, epochs: int, activations: list[Any] | None = None) -> ExperimentSpec:
    """A spec whose first ``arms`` arms (activation-major) make the grid; five activations unless given."""
    chosen = activations if activations is not None else MIXED_ACTIVATIONS[: min(arms, len(MIXED_ACTIVATIONS))]
    seeds = list(range(math.ceil(arms / len(chosen))))
    return ExperimentSpec.model_validate(
        {
            "name": f"bench {workload.name}",
            "dataset": {"name": workload.dataset},
            "model": workload.model,
            "activations": chosen,
            "seeds": seeds,
            "training": {"epochs": epochs, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
        }
    )


def grid_members(spec: ExperimentSpec, arms: int) -> list[tuple[int, int]]:
    """The first ``arms`` (activation_index, seed) pairs, seed-major so every activation appears early."""
    members = [(index, seed) for seed in spec.seeds for index in range(len(spec.activations))]
    return members[:arms]


def random_splits(workload: Workload, *, examples: int, device: torch.device) -> DatasetSplits:
    """Standard-normal inputs and uniform labels of the workload's shape (timing does not need real images)."""
    generator = torch.Generator().manual_seed(0)
    test_examples = max(examples // 6, 256)

    def inputs(count: int) -> torch.Tensor:
        return torch.randn(count, *workload.input_shape, generator=generator).to(device)

    def labels(count: int) -> torch.Tensor:
        return torch.randint(0, workload.classes, (count,), generator=generator).to(device)

    return DatasetSplits(
        name=f"random {workload.dataset}-shaped",
        input_shape=workload.input_shape,
        classes=workload.classes,
        train_x=inputs(examples),
        train_y=labels(examples),
        test_x=inputs(test_examples),
        test_y=labels(test_examples),
        val_x=None,
        val_y=None,
    )


def synchronise(device: torch.device) -> None:
    """Wait for queued device work so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(action: Callable[[], object], *, device: torch.device, repeat: int) -> float:
    """The fastest of ``repeat`` wall-clock timings of ``action`` (the minimum filters out other load)."""
    best = math.inf
    for _ in range(repeat):
        synchronise(device)
        started = time.perf_counter()
        action()
        synchronise(device)
        best = min(best, time.perf_counter() - started)
    return best


def machine_description(device: torch.device) -> dict[str, str]:
    """Date, CPU model, core count, threads, torch version and the GPU if one is used."""
    model_name = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False, timeout=10).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    facts = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model_name,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        facts["load average"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return facts


def in_own_session() -> int | None:
    """Run this benchmark again as the leader of a session of its own; its exit status, or None in that session.

    With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) each session gets an equal
    share of a busy machine's CPU, whatever number of processes it holds. ``actlab serve`` runs in a session of its
    own, so an engine timed in the caller's session (a shell, a test runner, other programs) is slower or faster
    than the service for that reason alone on a loaded machine; timed here, both get one session's share.
    """
    if os.getsid(0) == os.getpid():
        return None
    return subprocess.run([sys.executable, *sys.argv], start_new_session=True, check=False).returncode
