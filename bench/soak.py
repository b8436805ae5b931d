"""A bounded soak of the real stack (issue 14): mixed traffic while the worker is killed every few minutes.

Starts the API (uvicorn) and one Celery worker on a fresh PostgreSQL database and Redis under a unique
key prefix, as tests/integration does, then lets ``--clients`` threads send a weighted mix of requests
for ``--minutes``: submit tiny experiments (spirals or digits, a small MLP, 2-4 epochs, 2 activations x
2 seeds), get their status, download /metrics as CSV and JSON (each checked complete: it parses, every
run's epochs are 1..n without gaps or repeats, at least as many as the status said just before), follow
/events for a few seconds and cancel some experiments. Every ``--kill-every`` seconds the worker's whole
process group gets SIGKILL, as a crash would, and a new worker is started.

At the end it waits (bounded) for every experiment not cancelled to finish, then checks in the database
that every run's epoch rows are exactly 1..epochs_completed: rows lost or doubled must be 0. It prints
requests, status codes and errors by kind, p50/p99 latency per request kind and the memory (RSS) of the
API and worker sampled every 10 s (the worker 0 while it restarts), and writes all of it as JSON to
``--output``.

    python -m bench.soak [--minutes 30] [--kill-every 180] [--clients 8] [--seed 0]

Exit status 1 if a row was lost or doubled, a download was incomplete or any response was a 500.
Not part of the test suite: it takes as long as it is told to.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures import REPOSITORY, free_port, fresh_postgres_database, uvicorn_command, wait_until_healthy
from tests.integration.conftest import REDIS_URL, ManagedProcess, stack_environment

FINISHED = frozenset({"succeeded", "failed", "cancelled", "partial", "timed_out"})
# Request kinds and their weights in the mix.
MIX = {"submit": 2.0, "status": 5.0, "metrics_csv": 2.0, "metrics_json": 2.0, "events": 1.0, "cancel": 0.5}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _rss_mib(pid: int) -> float:
    """Resident memory of one process from /proc, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _group_rss_mib(group: int) -> float:
    """Resident memory of every process of a process group (a worker and its pool)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            total += _rss_mib(int(entry.name))
    return total


@dataclass
class Ledger:
    """What the clients saw, per request kind, shared by all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    experiments: dict[str, int] = field(default_factory=dict)  # id -> epochs per run
    cancelled: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)

    def record(self, kind: str, status: int | None, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.statuses[kind][str(status) if status is not None else "none"] += 1
            self.seconds[kind].append(seconds)
            if error is not None:
                self.errors[kind][error] += 1
            elif status is not None and status >= 500 and status not in (503,):
                self.errors[kind][f"http {status}"] += 1

    def pick_experiment(self, generator: random.Random, *, unfinished: bool = False) -> str | None:
        with self.lock:
            chosen = set(self.experiments) - (self.finished | self.cancelled if unfinished else set())
            return generator.choice(sorted(chosen)) if chosen else None

    def pending(self) -> int:
        """Experiments submitted and neither cancelled nor seen finished."""
        with self.lock:
            return len(set(self.experiments) - self.finished - self.cancelled)

    def seen(self, experiment: str, status: str) -> None:
        if status in FINISHED:
            with self.lock:
                self.finished.add(experiment)


def _spec(generator: random.Random, number: int) -> dict[str, Any]:
    dataset = generator.choice(
        [{"name": "spirals", "params": {"samples": 300}}, {"name": "digits"}],
    )
    return {
        "name": f"soak {number}",
        "dataset": dataset,
        "model": {"kind": "mlp", "hidden": [16]},
        "activations": generator.sample(["relu", "tanh", "gelu", "elu"], 2),
        "seeds": [0, 1],
        "training": {"epochs": generator.randint(2, 4), "batch_size": 64, "lr": 0.01},
        "device": "cpu",
    }


def _check_rows(rows: list[tuple[str, int]], completed: dict[str, int]) -> str | None:
    """None if every run's epochs are 1..n and n is at least what the status said; else what is wrong."""
    by_run: dict[str, list[int]] = defaultdict(list)
    for run_id, epoch in rows:
        by_run[run_id].append(epoch)
    for epochs in by_run.values():
        if sorted(epochs) != list(range(1, len(epochs) + 1)):
            return "gap or repeat"
    for run_id, count in completed.items():
        if len(by_run.get(run_id, [])) < count:
            return "fewer rows than epochs_completed"
    return None


class Client:
    """One client thread's requests; every outcome goes to the ledger."""

    def __init__(self, base: str, key: str, ledger: Ledger, generator: random.Random, sse_seconds: float) -> None:
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        self.ledger, self.generator, self.sse_seconds = ledger, generator, sse_seconds
        self.submitted = 0
        self.first_byte: float | None = None  # when the current stream's headers came

    def one(self, kind: str, max_pending: int) -> None:
        experiment = self.ledger.pick_experiment(self.generator, unfinished=kind == "cancel")
        if kind == "cancel" and experiment is None:
            kind = "status"
            experiment = self.ledger.pick_experiment(self.generator)
        if kind != "submit" and experiment is None:
            kind = "submit"
        if kind == "submit" and experiment is not None and self.ledger.pending() >= max_pending:
            kind = "status"
        started = time.perf_counter()
        self.first_byte = None
        try:
            status, error = getattr(self, kind)(experiment)
        except httpx.HTTPError as failure:
            status, error = None, f"exception {type(failure).__name__}"
        # A stream's latency is the time to its response headers, not how long it was followed.
        self.ledger.record(kind, status, (self.first_byte or time.perf_counter()) - started, error)

    def submit(self, _: str | None) -> tuple[int, str | None]:
        self.submitted += 1
        spec = _spec(self.generator, self.submitted)
        response = self.http.post("/v1/experiments", json=spec)
        if response.status_code in (200, 201, 202):
            with self.ledger.lock:
                self.ledger.experiments[response.json()["id"]] = spec["training"]["epochs"]
        return response.status_code, None

    def status(self, experiment: str | None) -> tuple[int, str | None]:
        response = self.http.get(f"/v1/experiments/{experiment}")
        if response.status_code == 200:
            self.ledger.seen(str(experiment), response.json()["status"])
        return response.status_code, None

    def _completed(self, experiment: str | None) -> dict[str, int] | None:
        response = self.http.get(f"/v1/experiments/{experiment}")
        if response.status_code != 200:
            return None
        self.ledger.seen(str(experiment), response.json()["status"])
        return {str(run["id"]): int(run["epochs_completed"]) for run in response.json()["runs"]}

    def metrics_csv(self, experiment: str | None) -> tuple[int, str | None]:
        completed = self._completed(experiment) or {}
        response = self.http.get(f"/v1/experiments/{experiment}/metrics", params={"format": "csv"})
        if response.status_code != 200:
            return response.status_code, None
        text = response.text
        if not text.endswith("\n"):
            return 200, "truncated body"
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None or "run_id" not in header or "epoch" not in header:
            return 200, "truncated body"
        run_column, epoch_column = header.index("run_id"), header.index("epoch")
        rows = []
        for row in reader:
            if len(row) != len(header):
                return 200, "truncated body"
            rows.append((row[run_column], int(row[epoch_column])))
        return 200, _check_rows(rows, completed)

    def metrics_json(self, experiment: str | None) -> tuple[int, str | None]:
        completed = self._completed(experiment) or {}
        response = self.http.get(f"/v1/experiments/{experiment}/metrics", params={"format": "json"})
        if response.status_code != 200:
            return response.status_code, None
        try:
            payload = json.loads(response.content)
        except ValueError:
            return 200, "truncated body"
        return 200, _check_rows([(str(row["run_id"]), int(row["epoch"])) for row in payload], completed)

    def events(self, experiment: str | None) -> tuple[int, str | None]:
        deadline = time.monotonic() + self.sse_seconds
        timeout = httpx.Timeout(120, read=self.sse_seconds)
        try:
            with self.http.stream("GET", f"/v1/experiments/{experiment}/events", timeout=timeout) as response:
                self.first_byte = time.perf_counter()
                if response.status_code == 200:
                    for _ in response.iter_lines():
                        if time.monotonic() > deadline:
                            break
                return response.status_code, None
        except httpx.ReadTimeout:
            return 200, None  # quiet for the whole window: the client goes away, as a browser tab would

    def cancel(self, experiment: str | None) -> tuple[int, str | None]:
        response = self.http.post(f"/v1/experiments/{experiment}/cancel")
        if response.status_code in (200, 202):
            with self.ledger.lock:
                self.ledger.cancelled.add(str(experiment))
        return response.status_code, None


def _create_key(database_url: str) -> str:
    from app.auth.service import create_api_key
    from app.db import make_engine, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            return create_api_key(session=session, name="soak", is_admin=True).key
    finally:
        engine.dispose()


def _database_check(database_url: str) -> dict[str, Any]:
    """Every run's epoch rows against 1..epochs_completed: rows lost, doubled or beyond, per the database."""
    from sqlalchemy import select

    from app.db import make_engine, session_scope
    from app.models import EpochMetric, Run

    engine = make_engine(database_url)
    lost = doubled = extra = retried = 0
    runs_by_status: Counter[str] = Counter()
    try:
        with session_scope(engine) as session:
            epochs: dict[uuid.UUID, list[int]] = defaultdict(list)
            for run_id, epoch in session.execute(select(EpochMetric.run_id, EpochMetric.epoch)):
                epochs[run_id].append(epoch)
            for run in session.scalars(select(Run)):
                runs_by_status[run.status] += 1
                retried += run.attempt > 1  # claimed again after a kill (the first claim makes it 1)
                stored = Counter(epochs.get(run.id, []))
                expected = set(range(1, run.epochs_completed + 1))
                lost += len(expected - set(stored))
                doubled += sum(count - 1 for count in stored.values() if count > 1)
                extra += len(set(stored) - expected)
    finally:
        engine.dispose()
    return {
        "runs": dict(runs_by_status),
        "runs_retried": retried,
        "rows_lost": lost,
        "rows_doubled": doubled,
        "rows_beyond": extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds between kills of the worker")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pending", type=int, default=6, help="submit only while fewer are not cancelled")
    parser.add_argument("--sse-seconds", type=float, default=3.0)
    parser.add_argument("--final-wait", type=float, default=600.0, help="seconds to wait for the last experiments")
    parser.add_argument("--output", type=Path, default=REPOSITORY / "bench" / "soak-results.json")
    arguments = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="actlab-soak-") as scratch, fresh_postgres_database("actlab_soak") as url:
        return _soak(arguments, Path(scratch), url)


def _soak(arguments: argparse.Namespace, workdir: Path, database_url: str) -> int:
    import redis

    from app.migrate import upgrade_database

    upgrade_database(database_url)
    key = _create_key(database_url)
    key_prefix = f"actlab-soak-{uuid.uuid4().hex[:12]}:"
    # The integration stack's environment (its broker timings: a killed worker's run comes back within
    # the visibility timeout), importable from the repository.
    environment = stack_environment(database_url=database_url, key_prefix=key_prefix, workdir=workdir)
    environment["PYTHONPATH"] = str(REPOSITORY)

    def process(name: str, command: list[str]) -> ManagedProcess:
        return ManagedProcess(name, command, workdir / f"{name}.log", environment, REPOSITORY).start()

    def start_worker(number: int) -> ManagedProcess:
        worker = process(
            f"worker-{number}", [sys.executable, "-m", "app.cli", "worker", "--queues=cpu", "--concurrency=1"]
        )
        deadline = time.monotonic() + 120
        while "ready." not in worker.log() and worker.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not worker.alive() or "ready." not in worker.log():
            raise SystemExit(f"the worker did not start:\n{worker.log()}")
        return worker

    port = free_port()
    api = process("api", uvicorn_command(port, "--log-level=warning"))
    url = f"http://127.0.0.1:{port}"
    workers = [start_worker(0)]
    ledger = Ledger()
    memory: list[dict[str, float]] = []
    kills: list[dict[str, float]] = []
    stop = threading.Event()
    began = time.monotonic()
    try:
        wait_until_healthy(url, alive=api.alive, log=api.log)
        soak_seconds = arguments.minutes * 60

        def sample() -> None:
            while True:
                memory.append(
                    {
                        "seconds": round(time.monotonic() - began, 1),
                        "api_mib": round(_rss_mib(api.pid), 1),
                        "worker_mib": round(_group_rss_mib(workers[-1].pid), 1),
                    }
                )
                if stop.wait(10):
                    return

        def kill() -> None:
            number = 1
            while not stop.wait(max(0.0, began + number * arguments.kill_every - time.monotonic())):
                number += 1
                killed_at = time.monotonic()
                workers[-1].signal_group(signal.SIGKILL)
                workers[-1].process.wait(timeout=30)  # type: ignore[union-attr]
                workers.append(start_worker(len(workers)))
                kills.append(
                    {
                        "at_seconds": round(killed_at - began, 1),
                        "restart_seconds": round(time.monotonic() - killed_at, 1),
                    }
                )

        def client(number: int) -> None:
            generator = random.Random(arguments.seed * 1000 + number)
            worker_client = Client(url, key, ledger, generator, arguments.sse_seconds)
            kinds, weights = list(MIX), list(MIX.values())
            try:
                while not stop.is_set() and time.monotonic() - began < soak_seconds:
                    worker_client.one(generator.choices(kinds, weights)[0], arguments.max_pending)
            finally:
                worker_client.http.close()

        helpers = [threading.Thread(target=sample, daemon=True), threading.Thread(target=kill, daemon=True)]
        clients = [threading.Thread(target=client, args=(number,)) for number in range(arguments.clients)]
        for thread in [*helpers, *clients]:
            thread.start()
        for thread in clients:
            thread.join()
        stop.set()
        helpers[1].join()
        if not workers[-1].alive():
            workers.append(start_worker(len(workers)))
        unfinished = _wait_for_the_rest(url, key, ledger, arguments.final_wait)
        helpers[0].join()
        memory.append(
            {
                "seconds": round(time.monotonic() - began, 1),
                "api_mib": round(_rss_mib(api.pid), 1),
                "worker_mib": round(_group_rss_mib(workers[-1].pid), 1),
            }
        )
        rows = _database_check(database_url)
    finally:
        stop.set()
        for managed in [*reversed(workers), api]:
            managed.stop(timeout=20)
        client_redis = redis.Redis.from_url(REDIS_URL)
        keys = list(client_redis.scan_iter(match=f"{key_prefix}*", count=1000))
        if keys:
            client_redis.delete(*keys)
        client_redis.close()
    report = _report(arguments, ledger, memory, kills, rows, unfinished, time.monotonic() - began)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    print(f"written to {arguments.output}")
    bad_downloads = sum(
        count
        for kind, errors in report["errors"].items()
        for error, count in errors.items()
        if kind.startswith("metrics") and not error.startswith("exception")
    )
    server_errors = sum(int(codes.get("500", 0)) for codes in report["statuses"].values())
    failed = rows["rows_lost"] + rows["rows_doubled"] + rows["rows_beyond"] + bad_downloads + server_errors
    return 1 if failed else 0


def _wait_for_the_rest(url: str, key: str, ledger: Ledger, timeout: float) -> list[str]:
    """Wait until every experiment not cancelled has finished; returns those that did not within ``timeout``."""
    deadline = time.monotonic() + timeout
    waiting = sorted(set(ledger.experiments) - ledger.cancelled)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while waiting and time.monotonic() < deadline:
            still = []
            for experiment in waiting:
                try:
                    if http.get(f"/v1/experiments/{experiment}").json()["status"] not in FINISHED:
                        still.append(experiment)
                except (httpx.HTTPError, ValueError, KeyError):
                    still.append(experiment)
            waiting = still
            if waiting:
                time.sleep(2)
    return waiting


def _report(
    arguments: argparse.Namespace,
    ledger: Ledger,
    memory: list[dict[str, float]],
    kills: list[dict[str, float]],
    rows: dict[str, Any],
    unfinished: list[str],
    seconds: float,
) -> dict[str, Any]:
    latency = {
        kind: {
            "count": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        }
        for kind, values in sorted(ledger.seconds.items())
    }
    return {
        "arguments": {key: str(value) for key, value in vars(arguments).items()},
        "machine": {"cores": os.cpu_count(), "load_average": [round(value, 2) for value in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": round(seconds, 1),
        "requests": sum(len(values) for values in ledger.seconds.values()),
        "latency": latency,
        "statuses": {kind: dict(codes) for kind, codes in sorted(ledger.statuses.items())},
        "errors": {kind: dict(errors) for kind, errors in sorted(ledger.errors.items())},
        "experiments": len(ledger.experiments),
        "cancelled": len(ledger.cancelled),
        "unfinished_after_wait": unfinished,
        "worker_kills": kills,
        "database": rows,
        "memory": memory,
    }


def _print(report: dict[str, Any]) -> None:
    print(
        f"{report['requests']} requests in {report['wall_seconds']:.0f} s, {len(report['worker_kills'])} worker kills"
    )
    print(f"{'kind':<14}{'count':>7}{'p50 ms':>10}{'p99 ms':>10}  statuses / errors")
    for kind, numbers in report["latency"].items():
        errors = report["errors"].get(kind, {})
        print(
            f"{kind:<14}{numbers['count']:>7}{numbers['p50_ms']:>10.1f}{numbers['p99_ms']:>10.1f}  "
            f"{report['statuses'][kind]} {errors or ''}"
        )
    print(
        f"experiments {report['experiments']}, cancelled {report['cancelled']}, "
        f"unfinished after the wait {len(report['unfinished_after_wait'])}"
    )
    print(f"database: {report['database']}")
    api = [sample["api_mib"] for sample in report["memory"]]
    worker = [sample["worker_mib"] for sample in report["memory"]]
    if api:
        print(
            f"memory MiB (first/max/last): API {api[0]}/{max(api)}/{api[-1]}, worker {worker[0]}/{max(worker)}/{worker[-1]}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
