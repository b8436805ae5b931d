"""The issue-16 peer comparison: one grid trained by a hand-written loop, the engine, ``actlab train``, Optuna, Ray Tune.

Workload (issue 16): MNIST-1D (the package's defaults), MLP 40-100-100-10, Adam 1e-2, batch 100, 5 epochs,
5 activations x 5 seeds. Every contender is timed whole (processes started, data made, every arm trained and
evaluated), in interleaved rounds so that the load of this shared machine hits them alike, and printed as a
ratio to the hand-written loop in 2 processes, with the mean final test accuracy beside it (the same workload,
so they agree within about a point; the inits differ by framework, not by design).

- hand-written, 1 / 2 processes: plain PyTorch written the way a user would, data generated in each process
  with ``mnist1d.data.make_dataset`` (not the service's cache), one torch thread per process when there are 2;
- engine, local: ``worker.local_runner.train_local`` in this process's children (the plan ``actlab train`` uses);
- ``actlab train``: the whole command in a subprocess (import, plan, dataset cache, training, CSV);
- Optuna GridSampler (in-memory storage) and Ray Tune (``reuse_actors``) when they are installed (``pip install
  optuna "ray[tune]"``; never needed by the tests); each trial is one arm of the grid.

Usage: ``.venv/bin/python bench/peers.py [--rounds 3] [--epochs 5]``. Record figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPOSITORY = Path(__file__).resolve().parents[1]
ACTIVATIONS = ["relu", "tanh", "sigmoid", "elu", "leaky_relu"]
SEEDS = [0, 1, 2, 3, 4]
_MODULES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
}


def spec(epochs: int) -> dict[str, Any]:
    return {
        "name": "peers",
        "dataset": {"name": "mnist1d"},
        "model": {"kind": "mlp", "hidden": [100, 100]},
        "activations": ACTIVATIONS,
        "seeds": SEEDS,
        "training": {"epochs": epochs, "batch_size": 100, "optimizer": "adam", "lr": 0.01},
        "device": "cpu",
    }


# --- the hand-written loop ------------------------------------------------------------------------------------


def _hand_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    xt, yt = torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"])
    mean, std = x.mean(), x.std()
    return (x - mean) / std, y, (xt - mean) / std, yt


def _hand_arm(activation: str, seed: int, epochs: int, data: tuple[torch.Tensor, ...]) -> float:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    act = _MODULES[activation]
    model = nn.Sequential(nn.Linear(40, 100), act(), nn.Linear(100, 100), act(), nn.Linear(100, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(100):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        return float((model(xt).argmax(1) == yt).float().mean())


def _hand_process(arms: list[tuple[str, int]], epochs: int, threads: int) -> list[float]:
    if threads:
        torch.set_num_threads(threads)
    data = _hand_data()
    return [_hand_arm(activation, seed, epochs, data) for activation, seed in arms]


def hand_written(processes: int, epochs: int) -> float:
    arms = [(activation, seed) for activation in ACTIVATIONS for seed in SEEDS]
    if processes == 1:
        return statistics.fmean(_hand_process(arms, epochs, 0))
    shares = [arms[index::processes] for index in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(_hand_process, [(share, epochs, 1) for share in shares])
    return statistics.fmean(accuracy for share in results for accuracy in share)


# --- the engine and the CLI -----------------------------------------------------------------------------------


def engine_local(epochs: int) -> float:
    from app.spec import ExperimentSpec
    from worker.local_runner import train_local

    outcomes = train_local(ExperimentSpec.model_validate(spec(epochs)), device="cpu")
    return statistics.fmean(outcome.reports[-1].test_accuracy for outcome in outcomes.values())


def actlab_train(epochs: int) -> float:
    import pandas as pd

    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "spec.json", Path(folder) / "epochs.csv"
        path.write_text(json.dumps(spec(epochs)), encoding="utf-8")
        subprocess.run(
            [str(Path(sys.executable).with_name("actlab")), "train", str(path), "--out", str(out)],
            check=True,
            capture_output=True,
            cwd=REPOSITORY,
        )
        rows = pd.read_csv(out)
    return float(rows[rows.epoch == epochs].test_accuracy.mean())


# --- Optuna and Ray Tune, when installed ------------------------------------------------------------------------


def optuna_grid(epochs: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = _hand_data()
    sampler = optuna.samplers.GridSampler({"activation": ACTIVATIONS, "seed": SEEDS})
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(
        lambda trial: _hand_arm(
            trial.suggest_categorical("activation", ACTIVATIONS), trial.suggest_categorical("seed", SEEDS), epochs, data
        ),
        n_trials=len(ACTIVATIONS) * len(SEEDS),
        n_jobs=1,
    )
    return statistics.fmean(trial.value for trial in study.trials if trial.value is not None)


def ray_tune(epochs: int) -> float:
    import ray
    from ray import tune

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:

        def trainable(config: dict[str, Any]) -> dict[str, float]:
            torch.set_num_threads(1)
            return {"accuracy": _hand_arm(config["activation"], config["seed"], epochs, _hand_data())}

        tuner = tune.Tuner(
            trainable,
            param_space={"activation": tune.grid_search(ACTIVATIONS), "seed": tune.grid_search(SEEDS)},
            tune_config=tune.TuneConfig(reuse_actors=True),
        )
        results = tuner.fit()
        return statistics.fmean(result.metrics["accuracy"] for result in results)
    finally:
        ray.shutdown()


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    arguments = parser.parse_args(argv)
    contenders: dict[str, Callable[[], float]] = {
        "hand-written, 2 processes": lambda: hand_written(2, arguments.epochs),
        "hand-written, 1 process": lambda: hand_written(1, arguments.epochs),
        "engine, local plan": lambda: engine_local(arguments.epochs),
        "actlab train, whole command": lambda: actlab_train(arguments.epochs),
    }
    if _installed("optuna"):
        contenders["Optuna GridSampler"] = lambda: optuna_grid(arguments.epochs)
    if _installed("ray"):
        contenders["Ray Tune, reuse_actors"] = lambda: ray_tune(arguments.epochs)
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    accuracy: dict[str, float] = {}
    for _round in range(arguments.rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            accuracy[name] = run()
            seconds[name].append(time.perf_counter() - start)
    baseline = min(seconds["hand-written, 2 processes"])
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"{len(ACTIVATIONS)} activations x {len(SEEDS)} seeds, {arguments.epochs} epochs, {arguments.rounds} rounds;")
    print(f"load average {' '.join(load)}; {multiprocessing.cpu_count()} CPUs; torch {torch.__version__}")
    print(f"{'contender':32} {'min ratio':>9} {'median':>7} {'min s':>7} {'test acc':>8}")
    for name, times in seconds.items():
        print(
            f"{name:32} {min(times) / baseline:9.2f} {statistics.median(times) / baseline:7.2f} "
            f"{min(times):7.2f} {accuracy[name]:8.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
