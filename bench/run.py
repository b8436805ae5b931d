"""Wall-time ratios of ordinary and stacked training, and of the service against the engine, side by side.

Run from the repository root::

    .venv/bin/python bench/run.py                      # MLP + CNN engine ratios, then the service overhead
    .venv/bin/python bench/run.py --device cuda --epochs 1 --arms 25
    .venv/bin/python bench/run.py --skip-service --repeat 3

For each workload (an MLP on MNIST-shaped data, a small CNN on CIFAR-shaped data; random tensors of those
shapes, since timing does not need real images) it times, in one process on one machine:

  (a) one ordinary run (``train_arm``),
  (b) the grid as sequential ordinary runs,
  (c) the grid stacked (``train_stacked``), and an all-ReLU stacked grid of the same size,

and prints the ratios to (a). Then (d): a 25-arm MNIST-1D grid submitted to ``actlab serve`` (embedded:
SQLite, folder broker, its worker with the default settings) and run by its worker, against the engine
called directly (in this process, and in as many processes as the worker has, each training its share
stacked, as the worker does), plus a single-arm experiment through the service. ``--service-variants``
adds services with other settings (the 0.5 s broker polling of before, or the worker as it was before it
trained stacked) measured in the same run. Every figure is the minimum over ``--repeat`` runs
after a warm-up, which filters out load from other processes. Benchmarks print ratios, never bare times
alone: only ratios measured side by side compare across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import torch

from app.spec import ExperimentSpec
from bench.common import (
    MIXED_ACTIVATIONS,
    WORKLOADS,
    Workload,
    grid_members,
    grid_spec,
    machine_description,
    random_splits,
    synchronise,
    timed,
)
from worker.training.datasets import DatasetSplits, load_dataset
from worker.training.stacked import member_memory_bytes, train_stacked
from worker.training.trainer import resolve_device, train_arm


def engine_ratios(
    workload: Workload, *, arms: int, epochs: int, examples: int, device: torch.device, repeat: int, cuda_graphs: bool
) -> dict[str, float]:
    """Seconds of (a) one run, (b) the sequential grid, (c) the stacked grid and the all-ReLU stacked grid."""
    spec = grid_spec(workload, arms=arms, epochs=epochs)
    relu_spec = grid_spec(workload, arms=arms, epochs=epochs, activations=["relu"])
    members = grid_members(spec, arms)
    relu_members = grid_members(relu_spec, arms)
    data = random_splits(workload, examples=examples, device=device)
    warm = random_splits(workload, examples=min(examples, 512), device=device)
    # Warm-up: library initialisation, kernel selection and caches are not what is measured.
    train_arm(spec, activation_index=0, seed=0, device=device, data=warm)
    train_stacked(spec, members=members, device=device, data=warm, cuda_graphs=cuda_graphs)

    def one() -> None:
        train_arm(spec, activation_index=members[0][0], seed=members[0][1], device=device, data=data)

    def sequential() -> None:
        for index, seed in members:
            train_arm(spec, activation_index=index, seed=seed, device=device, data=data)

    def stacked() -> None:
        train_stacked(spec, members=members, device=device, data=data, cuda_graphs=cuda_graphs)

    def stacked_relu() -> None:
        train_stacked(relu_spec, members=relu_members, device=device, data=data, cuda_graphs=cuda_graphs)

    def stacked_eager() -> None:
        train_stacked(spec, members=members, device=device, data=data, cuda_graphs=False)

    seconds = {
        "one": timed(one, device=device, repeat=repeat),
        "sequential": timed(sequential, device=device, repeat=repeat),
        "stacked": timed(stacked, device=device, repeat=repeat),
        "stacked_relu": timed(stacked_relu, device=device, repeat=repeat),
    }
    if device.type == "cuda" and cuda_graphs:
        # What the CUDA graph is worth: the same stacked grid with every step launched eagerly.
        train_stacked(spec, members=members, device=device, data=warm, cuda_graphs=False)
        seconds["stacked_eager"] = timed(stacked_eager, device=device, repeat=repeat)
    if device.type == "cuda":
        # The stack's peak device memory beside the estimate the worker plans its chunks with.
        synchronise(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        stacked()
        synchronise(device)
        seconds["stacked_peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        seconds["estimate_mib"] = member_memory_bytes(spec) * len(members) / 2**20
    return seconds


def print_engine(workload: Workload, seconds: dict[str, float], *, arms: int, epochs: int, examples: int) -> None:
    """One block of ratios to the single ordinary run."""
    one = seconds["one"]
    print(
        f"\n{workload.name}: {workload.model} on random {workload.dataset}-shaped data, "
        f"{examples} training examples, {epochs} epoch(s), {arms} arms"
    )
    print(f"  (a) one ordinary run                      1.00x   ({one:.2f} s)")
    print(f"  (b) grid, sequential ordinary runs   {seconds['sequential'] / one:9.2f}x")
    print(f"  (c) grid, stacked                    {seconds['stacked'] / one:9.2f}x")
    print(f"      all-ReLU grid, stacked           {seconds['stacked_relu'] / one:9.2f}x")
    print(f"      stacked speed-up over sequential {seconds['sequential'] / seconds['stacked']:9.2f}x")
    print(f"      mixed / all-ReLU stacked grid    {seconds['stacked'] / seconds['stacked_relu']:9.2f}x")
    if "stacked_eager" in seconds:
        print(f"      grid stacked, no CUDA graphs     {seconds['stacked_eager'] / one:9.2f}x")
        print(f"      CUDA-graph speed-up              {seconds['stacked_eager'] / seconds['stacked']:9.2f}x")
    if "stacked_peak_mib" in seconds:
        print(
            f"      peak GPU memory of the stacked grid {seconds['stacked_peak_mib']:.0f} MiB "
            f"(the worker plans chunks with an estimate of {seconds['estimate_mib']:.0f} MiB)"
        )


# --- (d) the service against the engine --------------------------------------------------------------------


# The checkout this benchmark belongs to.
REPOSITORY = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Settings of the services compared in (d): name -> (environment, description).
SERVICE_VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "default": ({}, "defaults"),
    "poll-0.5": ({"ACTLAB_BROKER_POLLING_INTERVAL": "0.5"}, "defaults, but the broker polled every 0.5 s"),
    "before": (
        {
            "ACTLAB_STACK_RUNS": "false",
            "ACTLAB_WORKER_CONCURRENCY": "1",
            "ACTLAB_TORCH_THREADS": "1",
            "ACTLAB_BROKER_POLLING_INTERVAL": "0.5",
        },
        "as before stacked workers: 1 process x 1 thread, one run per task, polling 0.5 s",
    ),
}


class EmbeddedService:
    """``actlab serve`` (SQLite, folder broker, its worker) in a temporary directory, with extra settings."""

    def __init__(self, directory: Path, *, settings: dict[str, str]) -> None:
        self.directory = directory
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ACTLAB_") and key not in ("DATABASE_URL", "BROKER_URL")
        }
        environment.update(
            {
                "PYTHONUNBUFFERED": "1",
                # The service of this checkout (a worktree's), not the one the virtual environment was installed from.
                "PYTHONPATH": os.pathsep.join([str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]),
                **settings,
                # A loopback-only service of this benchmark: no API key needed, and none written to the home folder.
                "ACTLAB_AUTH_REQUIRED": "false",
                "ACTLAB_CREDENTIALS_FILE": str(directory / "credentials.json"),
            }
        )
        self.log_path = directory / "serve.log"
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", f"--port={self.port}", "--loglevel=warning"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=directory,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Block until /healthz answers."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"actlab serve exited; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"actlab serve did not answer within {timeout:.0f} s; see {self.log_path}")

    def run_experiment(self, spec: dict[str, Any], *, timeout: float = 3600.0, poll: float = 0.1) -> float:
        """Submit a spec and wait until it is finished; seconds from the request to the finished status."""
        import httpx

        started = time.perf_counter()
        response = httpx.post(f"{self.url}/v1/experiments", json=spec, timeout=30)
        if response.status_code not in (200, 202):
            raise RuntimeError(f"submit failed with {response.status_code}: {response.text[:500]}")
        experiment_id = response.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = httpx.get(f"{self.url}/v1/experiments/{experiment_id}", timeout=30).json()
            if state["status"] in ("succeeded", "failed", "cancelled", "partial"):
                if state["status"] != "succeeded":
                    raise RuntimeError(f"experiment {experiment_id} ended {state['status']}")
                return time.perf_counter() - started
            time.sleep(poll)
        raise TimeoutError(f"experiment {experiment_id} did not finish within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def service_spec(
    *, activations: list[Any], seeds: list[int], epochs: int, name: str, batch_size: int = 128
) -> dict[str, Any]:
    """The MNIST-1D MLP spec of the CPU target, as JSON."""
    return {
        "name": name,
        "dataset": {"name": "mnist1d"},
        "model": {"kind": "mlp", "hidden": [128, 128]},
        "activations": activations,
        "seeds": seeds,
        "training": {"epochs": epochs, "batch_size": batch_size, "optimizer": "adam", "lr": 0.001},
        "device": "cpu",
    }


def parallel_stacked_seconds(grid: dict[str, Any], *, processes: int, repeat: int) -> float:
    """The engine's grid as the service's worker trains it: ``processes`` processes x 1 thread, each a share stacked."""
    from bench.cpu_study import Strategy, run_strategy

    strategy = Strategy(f"stacked, {processes} processes x 1 thread", processes, 1, True)
    return min(run_strategy(strategy, grid) for _ in range(repeat))


def service_ratios(
    *, arms: int, epochs: int, repeat: int, variants: list[str], batch_size: int = 128
) -> dict[str, float]:
    """Seconds of single-arm and grid experiments through the service and through the engine directly."""
    from app.config import default_worker_concurrency

    activations = MIXED_ACTIVATIONS[: min(arms, len(MIXED_ACTIVATIONS))]
    seeds = list(range(math.ceil(arms / len(activations))))
    grid = service_spec(activations=activations, seeds=seeds, epochs=epochs, name="bench grid", batch_size=batch_size)
    single = service_spec(
        activations=activations[:1], seeds=[0], epochs=epochs, name="bench single", batch_size=batch_size
    )
    spec = ExperimentSpec.model_validate(grid)
    members = [(arm.activation_index, arm.seed) for arm in spec.arms()]
    device = torch.device("cpu")
    data: DatasetSplits = load_dataset(spec.dataset, device=device)
    train_arm(spec, activation_index=0, seed=0, device=device, data=data)

    def engine_single() -> None:
        train_arm(spec, activation_index=0, seed=0, device=device, data=data)

    def engine_sequential() -> None:
        for index, seed in members:
            train_arm(spec, activation_index=index, seed=seed, device=device, data=data)

    def engine_stacked() -> None:
        train_stacked(spec, members=members, device=device, data=data)

    processes = default_worker_concurrency()
    results = {
        "engine_single": timed(engine_single, device=device, repeat=repeat),
        "engine_sequential": timed(engine_sequential, device=device, repeat=repeat),
        "engine_stacked": timed(engine_stacked, device=device, repeat=repeat),
        "worker_processes": float(processes),
    }
    with contextlib.ExitStack() as stack:
        services: dict[str, EmbeddedService] = {}
        for variant in variants:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="actlab-bench-")))
            services[variant] = EmbeddedService(folder, settings=SERVICE_VARIANTS[variant][0])
            stack.callback(services[variant].stop)
        # Warm-up: the worker processes import torch and cache the dataset once, as long-lived workers would;
        # a grid warms every process up.
        warm = {**grid, "name": "bench warm-up", "training": {**grid["training"], "epochs": 1}}
        for service in services.values():
            service.wait_healthy()
            service.run_experiment(warm)
        # Round by round, the engine's parallel grid and every service in turn (only one of them busy at a
        # time): load from other programs that comes and goes hits all of them alike.
        rounds: dict[str, list[float]] = {"engine_parallel": []}
        for _ in range(repeat):
            rounds["engine_parallel"].append(parallel_stacked_seconds(grid, processes=processes, repeat=1))
            for variant, service in services.items():
                rounds.setdefault(f"service_{variant}_single", []).append(service.run_experiment(single))
                rounds.setdefault(f"service_{variant}_grid", []).append(service.run_experiment(grid))
        results.update({name: min(values) for name, values in rounds.items()})
    return results


def print_service(
    seconds: dict[str, float], *, arms: int, epochs: int, variants: list[str], batch_size: int = 128
) -> None:
    """The service's overhead over the engine, and the grid against one single-arm experiment."""
    single = seconds["engine_single"]
    processes = int(seconds["worker_processes"])
    print(
        f"\n(d) service: MNIST-1D MLP 128-128, {epochs} epoch(s), batch {batch_size}, {arms} arms; "
        "ratios to one engine run"
    )
    print(f"  engine, one run                           1.00x   ({single:.2f} s)")
    print(f"  engine, grid sequential              {seconds['engine_sequential'] / single:9.2f}x")
    print(f"  engine, grid stacked                 {seconds['engine_stacked'] / single:9.2f}x")
    print(
        f"  engine, grid stacked in {processes} processes x 1 thread (as the default worker) "
        f"{seconds['engine_parallel'] / single:9.2f}x   ({seconds['engine_parallel']:.2f} s)"
    )
    for variant in variants:
        service_single, service_grid = seconds[f"service_{variant}_single"], seconds[f"service_{variant}_grid"]
        print(f"  service [{variant}: {SERVICE_VARIANTS[variant][1]}]")
        print(f"    single-arm experiment              {service_single / single:9.2f}x   ({service_single:.2f} s)")
        print(f"    grid experiment                    {service_grid / single:9.2f}x   ({service_grid:.2f} s)")
        print(f"    grid / single-arm experiment through the service: {service_grid / service_single:.2f}x")
        for path, label in (("sequential", "sequential grid"), ("parallel", f"{processes}-process stacked grid")):
            engine = seconds[f"engine_{path}"]
            print(f"    service overhead over the engine's {label}: {(service_grid - engine) / engine * 100:+.1f}%")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the measurements, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--arms", type=int, default=25, help="arms in the grid: 5 activations x seeds (default 25)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument(
        "--examples", type=int, default=None, help="training examples (default: a full epoch on cuda, less on cpu)"
    )
    parser.add_argument(
        "--workloads", default="mlp,cnn", help="comma-separated: mlp, cnn, or none for (d) only (default mlp,cnn)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="timings per figure; the minimum is kept (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="stacked training without CUDA graphs")
    parser.add_argument("--skip-service", action="store_true", help="skip (d), the service against the engine")
    parser.add_argument("--service-epochs", type=int, default=2, help="epochs of the (d) experiments (default 2)")
    parser.add_argument(
        "--service-batch-size", type=int, default=128, help="batch size of the (d) experiments (default 128)"
    )
    parser.add_argument(
        "--service-variants",
        default="default",
        help=f"comma-separated services to measure in (d): {', '.join(SERVICE_VARIANTS)} (default: default)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw seconds to this file")
    args = parser.parse_args(argv)
    for name in ("epochs", "arms", "repeat", "service_epochs", "service_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    names = [name.strip() for name in args.workloads.split(",") if name.strip() and name.strip() != "none"]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; allowed: {', '.join(WORKLOADS)}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    facts = machine_description(device)
    print("machine: " + "; ".join(f"{key} {value}" for key, value in facts.items()))
    if device.type != "cuda":
        print("no GPU in use: the CUDA-graph path of stacked training is not measured")
    raw: dict[str, Any] = {"machine": facts, "arguments": {k: str(v) for k, v in vars(args).items()}}
    for name in names:
        workload = WORKLOADS[name]
        examples = args.examples or workload.examples["cuda" if device.type == "cuda" else "cpu"]
        seconds = engine_ratios(
            workload,
            arms=args.arms,
            epochs=args.epochs,
            examples=examples,
            device=device,
            repeat=args.repeat,
            cuda_graphs=not args.no_cuda_graphs,
        )
        print_engine(workload, seconds, arms=args.arms, epochs=args.epochs, examples=examples)
        raw[name] = seconds
    variants = [name.strip() for name in args.service_variants.split(",") if name.strip()]
    unknown_variants = [name for name in variants if name not in SERVICE_VARIANTS]
    if unknown_variants or not variants:
        parser.error(f"unknown service variant {', '.join(unknown_variants)}; allowed: {', '.join(SERVICE_VARIANTS)}")
    if not args.skip_service:
        seconds = service_ratios(
            arms=args.arms,
            epochs=args.service_epochs,
            repeat=args.repeat,
            variants=variants,
            batch_size=args.service_batch_size,
        )
        print_service(
            seconds, arms=args.arms, epochs=args.service_epochs, variants=variants, batch_size=args.service_batch_size
        )
        raw["service"] = seconds
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
