"""The first experiment after ``actlab serve`` against the next one, with and without the worker's warm-up.

For each variant (warm-up off: ``ACTLAB_WORKER_WARM_UP_DATASET=""``; on: the default, mnist1d) a fresh
``actlab serve`` in a temporary folder (SQLite, folder broker, authentication off on loopback, an empty
dataset cache); once /healthz answers (its seconds from the start are printed: the warm-up must not delay
it), the same small MNIST-1D experiment (MLP 40-100-100-10, 5 activations x 1 seed, 2 epochs) is submitted
``--wait-seconds`` later and timed from submission to its end, then once more (the warm figure). The
variants alternate in order over ``--rounds`` rounds (the machine's load drifts); each row carries the
load average at its end. The goal: a first experiment within 1.5x of a warm one. The wait stands for the
user's own time between starting the service and submitting. With ``--after ready`` the wait starts when
/readyz answers (the worker consumes, its warm-up done): what is left of the cold start in the pool processes.

    python -m bench.cold_start [--wait-seconds 5] [--rounds 3] [--after healthz|ready]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.fixtures import free_port, wait_until_healthy

SPEC = {
    "name": "cold start",
    "dataset": {"name": "mnist1d"},
    "model": {"kind": "mlp", "hidden": [100, 100]},
    "activations": ["relu", "tanh", "elu", "gelu", "sigmoid"],
    "seeds": [0],
    "training": {"epochs": 2},
    "device": "cpu",
}
FINISHED = {"succeeded", "failed", "cancelled", "partial"}


def _experiment_seconds(url: str) -> float:
    """Seconds from submitting SPEC to its end (status polled every 50 ms)."""
    started = time.perf_counter()
    experiment_id = httpx.post(f"{url}/v1/experiments", json=SPEC, timeout=60).json()["id"]
    while (status := httpx.get(f"{url}/v1/experiments/{experiment_id}", timeout=60).json()["status"]) not in FINISHED:
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if status != "succeeded":
        raise SystemExit(f"experiment {experiment_id} ended {status}: see the service's log")
    return seconds


def _ready(url: str) -> None:
    """Wait until /readyz answers 200 (the worker consumes), polled every 0.2 s."""
    while httpx.get(f"{url}/readyz", timeout=60).status_code != 200:
        time.sleep(0.2)


def _variant(warm_up_dataset: str, wait_seconds: float, after: str) -> tuple[float, float | None, float, float]:
    """Seconds from the start to /healthz, to /readyz (``after`` ready only), of the first experiment and the second."""
    folder = Path(tempfile.mkdtemp(prefix="actlab-bench-cold-"))
    port = free_port()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("ACTLAB_") and key != "DATABASE_URL"
    }
    environment.update(ACTLAB_AUTH_REQUIRED="false", ACTLAB_WORKER_WARM_UP_DATASET=warm_up_dataset)
    log = (folder / "serve.log").open("w")
    spawned = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--loglevel", "warning"],
        cwd=folder,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, alive=lambda: server.poll() is None, log=(folder / "serve.log").read_text, timeout=300)
        healthy = time.perf_counter() - spawned
        ready = None
        if after == "ready":
            _ready(url)
            ready = time.perf_counter() - spawned
        time.sleep(wait_seconds)
        first = _experiment_seconds(url)
        second = _experiment_seconds(url)
        return healthy, ready, first, second
    except BaseException:
        print((folder / "serve.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(folder / "data", ignore_errors=True)  # the dataset cache; the log and database stay


def main(argv: list[str] | None = None) -> None:
    """Both variants in alternating order over the rounds; prints seconds and ratios per run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-seconds", type=float, default=5.0, help="from /healthz to the first submission")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, interleaved")
    parser.add_argument(
        "--after",
        choices=("healthz", "ready"),
        default="healthz",
        help="submit the wait after /healthz answers (default), or after /readyz does (the worker consumes)",
    )
    arguments = parser.parse_args(argv)
    variants = (("off", ""), ("on", "mnist1d"))
    print(f"# bench/cold_start.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, ", end="")
    print(f"load average at the start {_load()}, submitted {arguments.wait_seconds} s after /{arguments.after}")
    print(
        f"{'round':<6}{'warm-up':<9}{'healthz s':>10}{'ready s':>9}{'first s':>9}{'second s':>10}{'first/second':>14}"
        "  load"
    )
    ratios: dict[str, list[float]] = {name: [] for name, _ in variants}
    for round_index in range(arguments.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for name, dataset in order:
            healthy, ready, first, second = _variant(dataset, arguments.wait_seconds, arguments.after)
            ratios[name].append(first / second)
            shown = "-" if ready is None else f"{ready:.2f}"
            print(
                f"{round_index + 1:<6}{name:<9}{healthy:>10.2f}{shown:>9}{first:>9.2f}{second:>10.2f}"
                f"{first / second:>14.2f}  {_load()}",
                flush=True,
            )
    for name, values in ratios.items():
        print(f"# warm-up {name}: first/second median {statistics.median(values):.2f} over {len(values)} runs")


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
