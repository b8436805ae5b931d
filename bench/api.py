"""The API under load: /healthz, status, results (cold and cached) and metrics, side by side against uvicorn.

Serves the app in a real ``uvicorn`` process on loopback (SQLite, authentication off) with one finished
experiment of 25 runs (5 activations x 5 seeds, 5 epochs: 125 epoch rows), then measures, interleaved in
rounds so that changing machine load hits every endpoint alike, ``--connections`` keep-alive clients (one
thread each) sending requests back to back:

- ``healthz``: GET /healthz, the floor of a request;
- ``status``: GET /v1/experiments/{id};
- ``results cold``: GET .../results with a threshold no request used before, so each one is a first
  computation (the cache cannot answer it);
- ``results cached``: GET .../results with the defaults (computed once, then from the results cache);
- ``metrics json``, ``metrics csv``: GET .../metrics, all 125 rows.

Prints requests per second, p50 and p99 latency per endpoint and each as a ratio to /healthz, and the server
process's CPU time per request (``--cpu-requests`` requests one after another on one connection, read from
/proc: the figure that machine load disturbs least).

    python -m bench.api [--connections 4] [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from app.config import Settings
from app.main import create_app
from tests.fixtures import migrate_sqlite_template, uvicorn_server
from tests.results.conftest import insert_experiment
from tests.results.synthetic import SyntheticArm

SPEC = {
    "name": "bench api 25 runs",
    "dataset": {"name": "mnist1d"},
    "model": {"kind": "mlp", "hidden": [100, 100]},
    "activations": ["relu", "tanh", "elu", "gelu", "sigmoid"],
    "seeds": [0, 1, 2, 3, 4],
    "training": {"epochs": 5},
    "device": "cpu",
}


def _seed_database(path: Path) -> str:
    """A migrated SQLite file with the finished 25-run experiment; returns its id."""
    migrate_sqlite_template(path)
    settings = Settings(DATABASE_URL=f"sqlite:///{path}", BROKER_URL="filesystem://", auth_required=False)
    arms = [SyntheticArm(name, name, 0.6 + 0.02 * index, noise=0.01) for index, name in enumerate(SPEC["activations"])]
    app = create_app(settings)
    with app.state.session_factory() as session:
        return str(insert_experiment(session, spec_payload=SPEC, arms=arms, status="succeeded"))


def _load(url_of: Callable[[], str], clients: list[httpx.Client], seconds: float) -> tuple[int, float, list[float]]:
    """Every client sends requests back to back for ``seconds``; (requests, wall seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def work(client: httpx.Client) -> None:
        mine: list[float] = []
        while time.perf_counter() < deadline:
            url = url_of()
            started = time.perf_counter()
            response = client.get(url)
            mine.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code} {response.text[:200]}")
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), time.perf_counter() - started, latencies


def _server_pid() -> int | None:
    """The uvicorn child of this process (Linux /proc), or None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"uvicorn" in command:
            return int(entry.name)
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    """Serve, load each endpoint in interleaved rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="load per endpoint and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-requests", type=int, default=200, help="sequential requests per endpoint for CPU time")
    arguments = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="actlab-bench-api-"))
    experiment_id = _seed_database(folder / "bench.db")
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder / 'bench.db'}",
        "BROKER_URL": "filesystem://",
        "ACTLAB_BROKER_FOLDER": str(folder / "broker"),
        "ACTLAB_AUTH_REQUIRED": "false",
        "ACTLAB_LOG_LEVEL": "WARNING",
    }
    thresholds = itertools.count()
    base = f"/v1/experiments/{experiment_id}"
    endpoints: dict[str, Callable[[], str]] = {
        "healthz": lambda: "/healthz",
        "status": lambda: base,
        "results cold": lambda: f"{base}/results?threshold={0.5 + next(thresholds) * 1e-9:.12f}",
        "results cached": lambda: f"{base}/results",
        "metrics json": lambda: f"{base}/metrics",
        "metrics csv": lambda: f"{base}/metrics?format=csv",
    }
    totals = {name: [0, 0.0] for name in endpoints}
    latencies: dict[str, list[float]] = {name: [] for name in endpoints}
    cpu_ms: dict[str, float] = {}
    with uvicorn_server(
        environment=environment, log_path=folder / "uvicorn.log", options=("--log-level=warning",)
    ) as url:
        clients = [httpx.Client(base_url=url, timeout=60.0) for _ in range(arguments.connections)]
        try:
            for client in clients:  # warm: connections open, the cached entry stored, imports done
                for url_of in endpoints.values():
                    client.get(url_of())
            assert len(clients[0].get(f"{base}/metrics").json()) == 125
            names = list(endpoints)
            for round_index in range(arguments.rounds):
                # A different order each round, so no endpoint always follows the same one.
                for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                    count, wall, measured = _load(endpoints[name], clients, arguments.seconds)
                    totals[name][0] += count
                    totals[name][1] += wall
                    latencies[name].extend(measured)
            pid = _server_pid()
            for name, url_of in endpoints.items():
                if pid is None or arguments.cpu_requests <= 0:
                    break
                requests = arguments.cpu_requests if name != "results cold" else max(1, arguments.cpu_requests // 10)
                before = _cpu_seconds(pid)
                for _ in range(requests):
                    clients[0].get(url_of())
                cpu_ms[name] = (_cpu_seconds(pid) - before) / requests * 1000
        finally:
            for client in clients:
                client.close()
    print(f"# bench/api.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, ")
    print(f"# {os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, ")
    print(
        f"# {arguments.connections} connections, {arguments.rounds} rounds x {arguments.seconds} s, Python {sys.version.split()[0]}"
    )
    reference = totals["healthz"][0] / totals["healthz"][1]
    reference_p99 = _percentile(latencies["healthz"], 0.99)
    print(
        f"{'endpoint':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s / healthz':>17}{'p99 / healthz':>15}"
        f"{'server CPU ms':>15}"
    )
    for name in endpoints:
        rate = totals[name][0] / totals[name][1]
        p50 = statistics.median(latencies[name])
        p99 = _percentile(latencies[name], 0.99)
        print(
            f"{name:<16}{rate:>9.1f}{p50 * 1000:>9.2f}{p99 * 1000:>9.2f}{rate / reference:>17.2f}{p99 / reference_p99:>15.2f}"
            f"{cpu_ms.get(name, float('nan')):>15.2f}"
        )


if __name__ == "__main__":
    main()
