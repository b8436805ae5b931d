"""CPU study: which of stacking, torch threads or several worker processes trains a grid fastest.

Run from the repository root::

    .venv/bin/python bench/cpu_study.py                 # 25-arm MNIST-1D MLP grid, 3 epochs, 3 rounds
    .venv/bin/python bench/cpu_study.py --epochs 2 --rounds 5 --model cnn

Every strategy trains the same grid (5 activations x 5 seeds) in freshly started processes: each process
sets its torch threads, loads the dataset and warms up, then all of them pass a barrier together and the
wall time runs from there until the last one is done (as long-lived workers would see it: no import or
dataset load in the figure). Strategies are interleaved round by round and each keeps its fastest round,
so load from other programs on the machine hurts all of them alike and is filtered out as far as it can be.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MIXED_ACTIVATIONS, machine_description

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"kind": "mlp", "hidden": [128, 128]},
    "cnn": {"kind": "cnn", "channels": [16, 32], "kernel_size": 5},
}


@dataclass(frozen=True)
class Strategy:
    """How a grid is spread over processes and threads, and whether each process stacks its arms."""

    name: str
    processes: int
    threads: int
    stacked: bool
    arms: int | None = None  # None: the whole grid; 1: the single-run reference


def strategies() -> list[Strategy]:
    """The strategies compared (the machine has two cores)."""
    return [
        Strategy("one run, 1 thread", 1, 1, False, arms=1),
        Strategy("one run, 2 threads", 1, 2, False, arms=1),
        Strategy("sequential, 1 process x 1 thread", 1, 1, False),
        Strategy("sequential, 1 process x 2 threads", 1, 2, False),
        Strategy("sequential, 2 processes x 1 thread", 2, 1, False),
        Strategy("stacked, 1 process x 1 thread", 1, 1, True),
        Strategy("stacked, 1 process x 2 threads", 1, 2, True),
        Strategy("stacked, 2 processes x 1 thread", 2, 1, True),
    ]


def study_spec(model: str, epochs: int) -> dict[str, Any]:
    """The grid: MNIST-1D, five activations, five seeds."""
    return {
        "name": "cpu study",
        "dataset": {"name": "mnist1d"},
        "model": MODELS[model],
        "activations": MIXED_ACTIVATIONS,
        "seeds": [0, 1, 2, 3, 4],
        "training": {"epochs": epochs, "batch_size": 128, "optimizer": "adam", "lr": 0.001},
        "device": "cpu",
    }


def _worker(
    spec_json: dict[str, Any],
    members: list[tuple[int, int]],
    threads: int,
    stacked: bool,
    barrier: Barrier,
    results: Any,
    slot: int,
) -> None:
    import torch

    torch.set_num_threads(threads)
    from app.spec import ExperimentSpec
    from worker.training.datasets import load_dataset
    from worker.training.stacked import train_stacked
    from worker.training.trainer import train_arm

    spec = ExperimentSpec.model_validate(spec_json)
    data = load_dataset(spec.dataset)
    warm = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 1})})
    # Warm-up: the first steps pay for kernel selection and allocation, which a long-lived worker pays once.
    if stacked:
        train_stacked(warm, members=members, data=data)
    else:
        train_arm(warm, activation_index=members[0][0], seed=members[0][1], data=data)
    barrier.wait()
    started = time.perf_counter()
    if stacked:
        train_stacked(spec, members=members, data=data)
    else:
        for index, seed in members:
            train_arm(spec, activation_index=index, seed=seed, data=data)
    results[2 * slot] = started
    results[2 * slot + 1] = time.perf_counter()


def run_strategy(strategy: Strategy, spec_json: dict[str, Any]) -> float:
    """Wall seconds from the common start to the last process's end."""
    arms = [(index, seed) for index in range(len(spec_json["activations"])) for seed in spec_json["seeds"]]
    if strategy.arms is not None:
        arms = arms[: strategy.arms]
    # Activation-major halves: each process stacks whole activation groups where it can.
    share = math.ceil(len(arms) / strategy.processes)
    chunks = [arms[start : start + share] for start in range(0, len(arms), share)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(chunks))
    results = context.Array("d", 2 * len(chunks))
    processes = [
        context.Process(
            target=_worker,
            args=(spec_json, chunk, strategy.threads, strategy.stacked, barrier, results, slot),
        )
        for slot, chunk in enumerate(chunks)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"{strategy.name}: a worker process exited with {process.exitcode}")
    starts = [results[2 * slot] for slot in range(len(chunks))]
    ends = [results[2 * slot + 1] for slot in range(len(chunks))]
    return max(ends) - min(starts)


def main(argv: list[str] | None = None) -> int:
    """Run every strategy ``--rounds`` times, interleaved; print each one's best time as ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per arm (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each strategy keeps its best (default 3)")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="mlp (default) or cnn")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be at least 1")
    import torch

    facts = machine_description(torch.device("cpu"))
    print("machine: " + "; ".join(f"{key} {value}" for key, value in facts.items() if key != "torch threads"))
    spec_json = study_spec(args.model, args.epochs)
    print(f"grid: MNIST-1D, {MODELS[args.model]}, 5 activations x 5 seeds, {args.epochs} epoch(s)")
    best: dict[str, float] = {}
    for round_index in range(args.rounds):
        for strategy in strategies():
            seconds = run_strategy(strategy, spec_json)
            best[strategy.name] = min(best.get(strategy.name, math.inf), seconds)
            print(f"  round {round_index + 1}: {strategy.name:38s} {seconds:7.2f} s", flush=True)
    reference = best["one run, 1 thread"]
    print(f"\nbest of {args.rounds} rounds, as multiples of one run with 1 thread ({reference:.2f} s):")
    for strategy in strategies():
        print(f"  {strategy.name:38s} {best[strategy.name] / reference:7.2f}x")
    grid = {name: seconds for name, seconds in best.items() if not name.startswith("one run")}
    fastest = min(grid, key=grid.__getitem__)
    print(f"fastest grid strategy: {fastest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
