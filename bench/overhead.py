"""The service's overhead on a ~10-s CPU grid (issue 16 item 6): service created -> finished against the engine.

Run from the repository root::

    .venv/bin/python bench/overhead.py                      # 25-arm MNIST-1D MLP 128-128, 30 epochs, 3 rounds
    .venv/bin/python bench/overhead.py --rounds 5 --epochs 30 --poll 1

In interleaved rounds, each round times:

- **engine**: the grid as the worker trains it without the service: as many freshly started processes as the
  worker has, 1 torch thread each, each training its share stacked (``bench.cpu_study``: data loaded and warmed up
  before a common start, as in long-lived workers);
- **service**: the same grid submitted to ``actlab serve`` (embedded: SQLite, folder broker, its real worker with
  the default settings, warmed up with a grid first), timed from the experiment's ``created_at`` to its
  ``finished_at`` as the server recorded them (so the client's polling interval does not count), and from the
  POST to the client seeing the end.

It prints the service/engine ratio of the minima and of the medians, and where the service's extra time goes
(from the experiment's and runs' own timestamps): created -> first run started (queueing and dispatch), the
stacks' training time (``training_seconds``, which excludes every database write but the per-epoch one) and the
rest. The machine's load (``os.getloadavg``) is printed before and after: on a shared machine only ratios
measured in the same run compare. Record figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIXED_ACTIVATIONS, in_own_session, machine_description
from bench.run import EmbeddedService, parallel_stacked_seconds, service_spec

# Services compared: name -> the settings (environment) that differ from the defaults.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    # Before issue 16 item 6: SQLite synced every commit (a stack's per-epoch write waited for an fsync).
    "sqlite-full": {"ACTLAB_SQLITE_SYNCHRONOUS": "full"},
}


def _timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def service_round(service: EmbeddedService, grid: dict[str, Any], *, poll: float) -> dict[str, float]:
    """Run the grid once through the service; its seconds created -> finished and their parts."""
    import httpx

    started = time.perf_counter()
    response = httpx.post(f"{service.url}/v1/experiments", json=grid, timeout=30)
    response.raise_for_status()
    experiment_id = response.json()["id"]
    while True:
        experiment = httpx.get(f"{service.url}/v1/experiments/{experiment_id}", timeout=30).json()
        if experiment["status"] in ("succeeded", "failed", "cancelled", "partial"):
            break
        time.sleep(poll)
    wall = time.perf_counter() - started
    if experiment["status"] != "succeeded":
        raise RuntimeError(f"experiment {experiment_id} ended {experiment['status']}")
    runs = httpx.get(f"{service.url}/v1/experiments/{experiment_id}/runs", timeout=30).json()
    created = _timestamp(experiment["created_at"])
    finished = _timestamp(experiment["finished_at"])
    starts = [_timestamp(run["timings"]["started_at"]) for run in runs]
    ends = [_timestamp(run["timings"]["finished_at"]) for run in runs]
    stacks: dict[Any, float] = {}
    for run in runs:
        key = run.get("stack_id") or run["id"]
        stacks[key] = max(stacks.get(key, 0.0), run["timings"]["training_seconds"] or 0.0)
    return {
        "seconds": (finished - created).total_seconds(),
        "client_wall": wall,
        "to_first_start": (min(starts) - created).total_seconds(),
        "first_to_last_start": (max(starts) - min(starts)).total_seconds(),
        "last_run_to_finished": (finished - max(ends)).total_seconds(),
        "stack_training_max": max(stacks.values()),
        "stacks": float(len(stacks)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.5, help="the client's status polling interval (seconds)")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=[name for name in VARIANTS if name != "default"],
        help="services with other settings measured in the same rounds, besides the default one",
    )
    arguments = parser.parse_args(argv)
    status = in_own_session()
    if status is not None:
        return status
    import torch

    from app.config import default_worker_concurrency

    grid = service_spec(
        activations=MIXED_ACTIVATIONS,
        seeds=list(range(arguments.seeds)),
        epochs=arguments.epochs,
        name="bench overhead grid",
        batch_size=arguments.batch_size,
    )
    processes = default_worker_concurrency()
    print(f"machine: {machine_description(torch.device('cpu'))}")
    print(f"load average at the start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print(
        f"grid: {len(MIXED_ACTIVATIONS) * arguments.seeds} arms, MNIST-1D MLP 128-128, {arguments.epochs} epochs, "
        f"batch {arguments.batch_size}; {processes} worker processes x 1 thread"
    )
    variants = {name: VARIANTS[name] for name in ["default", *arguments.variants]}
    rounds: list[dict[str, dict[str, float]]] = []
    with contextlib.ExitStack() as stack:
        services: dict[str, EmbeddedService] = {}
        for name, settings in variants.items():
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="actlab-overhead-")))
            services[name] = EmbeddedService(folder, settings=settings)
            stack.callback(services[name].stop)
        warm = {**grid, "name": "warm-up", "training": {**grid["training"], "epochs": 1}}
        for service in services.values():
            service.wait_healthy()
            service.run_experiment(warm)
        contenders = ["engine", *services]
        for index in range(arguments.rounds):
            # Rotate which goes first, so that load that comes and goes hits all of them alike.
            order = contenders[index % len(contenders) :] + contenders[: index % len(contenders)]
            figures: dict[str, dict[str, float]] = {}
            for name in order:
                if name == "engine":
                    figures[name] = {"seconds": parallel_stacked_seconds(grid, processes=processes, repeat=1)}
                else:
                    figures[name] = service_round(services[name], grid, poll=arguments.poll)
            rounds.append(figures)
            engine = figures["engine"]["seconds"]
            parts = [f"engine {engine:.2f} s"]
            for name in services:
                one = figures[name]
                parts.append(
                    f"service[{name}] {one['seconds']:.2f} s ({one['seconds'] / engine:.3f}x; to first start "
                    f"{one['to_first_start']:.2f} s, first -> last start {one['first_to_last_start']:.2f} s, stack "
                    f"training {one['stack_training_max']:.2f} s, last run -> finished "
                    f"{one['last_run_to_finished']:.3f} s, client wall {one['client_wall']:.2f} s)"
                )
            print(f"round {index + 1}: {'; '.join(parts)}; load {os.getloadavg()[0]:.2f}", flush=True)
    engines = [figures["engine"]["seconds"] for figures in rounds]
    print(f"engine: min {min(engines):.2f} s, median {statistics.median(engines):.2f} s")
    for name in services:
        seconds = [figures[name]["seconds"] for figures in rounds]
        per_round = ", ".join(f"{one / engine:.3f}" for one, engine in zip(seconds, engines, strict=True))
        print(
            f"service[{name}] / engine: {min(seconds) / min(engines):.3f}x (minima), "
            f"{statistics.median(seconds) / statistics.median(engines):.3f}x (medians); per round {per_round} "
            f"(target 1.05x); service min {min(seconds):.2f} s, median {statistics.median(seconds):.2f} s"
        )
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
