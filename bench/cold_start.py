"""The first experiment after ``actlab serve`` against the next one, with and without the pool warm-up.

For each variant (warm-up off: ``ACTLAB_WORKER_WARM_UP_DATASET=""``; on: the default, mnist1d) a fresh
``actlab serve`` in a temporary folder (SQLite, folder broker, authentication off on loopback); once
/healthz answers, the same small MNIST-1D experiment (MLP 40-100-100-10, 5 activations x 1 seed, 2
epochs) is submitted ``--wait-seconds`` later and timed from submission to its end, then once more (the
warm figure). Prints each variant's first/second ratio: the warm-up's goal is a first experiment within
1.5x of a warm one. The wait stands for the user's own time between starting the service and submitting.

    python -m bench.cold_start [--wait-seconds 5]
"""

from __future__ import annotations

import argparse
import os
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
    while httpx.get(f"{url}/v1/experiments/{experiment_id}", timeout=60).json()["status"] not in FINISHED:
        time.sleep(0.05)
    return time.perf_counter() - started


def _variant(warm_up_dataset: str, wait_seconds: float) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="actlab-bench-cold-"))
    port = free_port()
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("ACTLAB_") and key != "DATABASE_URL"
    }
    environment.update(ACTLAB_AUTH_REQUIRED="false", ACTLAB_WORKER_WARM_UP_DATASET=warm_up_dataset)
    log = (folder / "serve.log").open("w")
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
        time.sleep(wait_seconds)
        first = _experiment_seconds(url)
        second = _experiment_seconds(url)
        return first, second
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main(argv: list[str] | None = None) -> None:
    """Both variants, one after the other; prints seconds and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait-seconds", type=float, default=5.0, help="from /healthz to the first submission")
    arguments = parser.parse_args(argv)
    results = {name: _variant(dataset, arguments.wait_seconds) for name, dataset in (("off", ""), ("on", "mnist1d"))}
    print(f"# bench/cold_start.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, ")
    print(f"# load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}, wait {arguments.wait_seconds} s")
    print(f"{'warm-up':<10}{'first s':>9}{'second s':>10}{'first / second':>16}")
    for name, (first, second) in results.items():
        print(f"{name:<10}{first:>9.2f}{second:>10.2f}{first / second:>16.2f}")


if __name__ == "__main__":
    main()
