"""The single-arm fixed overhead (issue 16 item 5): one short arm through the service against the bare engine arm.

Run from the repository root (Redis at 127.0.0.1:6379; a database number of its own, 11 by default)::

    .venv/bin/python bench/single_arm.py                       # Redis and folder brokers, 4 epochs, 7 rounds
    .venv/bin/python bench/single_arm.py --brokers redis --rounds 11 --epochs 4

In interleaved rounds (the order rotated each round) it times:

- **engine**: ``train_arm`` in this process, one torch thread (as each of the worker's pool processes), the
  dataset loaded and the engine warmed up before (as in a long-lived worker);
- **service[broker]**: the same spec as a one-arm experiment submitted to ``actlab serve`` (SQLite, its real
  worker with the default settings, warmed up first) with the Redis broker or the embedded folder broker, timed
  by the server's own records from the experiment's ``created_at`` to its ``finished_at``; the client learns of
  the end from the experiment's server-sent events (``client`` is the POST to the ``end`` event, which the events
  endpoint sends at its next look at the database, at most a second later).

It prints the service/engine ratios of the minima and medians (goal: under 1.3x with Redis) and where the
service's fixed time goes, from the rows the service wrote (created -> enqueued -> claimed by a pool process ->
epoch 0 stored (spec, data, model built, evaluated at initialisation) -> last epoch stored -> run finished ->
experiment finished). The load average is printed before, after each round and at the end: on a shared machine
only figures measured in the same run compare. Record figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import in_own_session, machine_description
from bench.run import EmbeddedService, service_spec

# The steps of a single-arm experiment in the service's rows: (label, from, to).
STEPS = (
    ("created -> enqueued", "created", "enqueued"),
    ("enqueued -> claimed", "enqueued", "claimed"),
    ("claimed -> epoch 0 stored", "claimed", "epoch0"),
    ("epoch 0 -> last epoch stored", "epoch0", "last_epoch"),
    ("last epoch -> run finished", "last_epoch", "run_finished"),
    ("run -> experiment finished", "run_finished", "finished"),
)


def _moment(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _moments(database: Path, experiment_id: str) -> dict[str, dt.datetime]:
    """The experiment's and its run's timestamps as the service recorded them."""
    key = uuid.UUID(experiment_id).hex
    with contextlib.closing(sqlite3.connect(database)) as connection:
        created, finished = connection.execute(
            "SELECT created_at, finished_at FROM experiments WHERE replace(id, '-', '') = ?", (key,)
        ).fetchone()
        run_id, enqueued, claimed, run_finished = connection.execute(
            "SELECT id, enqueued_at, started_at, finished_at FROM runs WHERE replace(experiment_id, '-', '') = ?",
            (key,),
        ).fetchone()
        epochs = connection.execute(
            "SELECT min(created_at), max(created_at) FROM epoch_metrics WHERE run_id = ?", (run_id,)
        ).fetchone()
    texts = {
        "created": created,
        "enqueued": enqueued,
        "claimed": claimed,
        "epoch0": epochs[0],
        "last_epoch": epochs[1],
        "run_finished": run_finished,
        "finished": finished,
    }
    return {name: _moment(text) for name, text in texts.items()}


def _wait_for_end(url: str, experiment_id: str) -> str:
    """Follow the experiment's server-sent events until the ``end`` event; its status."""
    import json

    import httpx

    with httpx.stream("GET", f"{url}/v1/experiments/{experiment_id}/events", timeout=120) as response:
        response.raise_for_status()
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "end":
                return str(json.loads(line.removeprefix("data: "))["status"])
    raise RuntimeError(f"the events of {experiment_id} ended without an end event")


def service_round(service: EmbeddedService, spec: dict[str, Any]) -> dict[str, float]:
    """One single-arm experiment through the service: created -> finished, the client's wait, the steps."""
    import httpx

    started = time.perf_counter()
    response = httpx.post(f"{service.url}/v1/experiments", json=spec, timeout=30)
    response.raise_for_status()
    posted = time.perf_counter()
    experiment_id = response.json()["id"]
    status = _wait_for_end(service.url, experiment_id)
    client = time.perf_counter() - started
    if status != "succeeded":
        raise RuntimeError(f"experiment {experiment_id} ended {status}")
    moments = _moments(service.directory / "actlab.db", experiment_id)
    figures = {
        "seconds": (moments["finished"] - moments["created"]).total_seconds(),
        "client": client,
        "post": posted - started,
    }
    for label, first, second in STEPS:
        figures[label] = (moments[second] - moments[first]).total_seconds()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--brokers", nargs="+", default=["redis", "folder"], choices=["redis", "folder"])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11", help="the Redis broker's database")
    arguments = parser.parse_args(argv)
    status = in_own_session()
    if status is not None:
        return status
    import torch

    from app.spec import ExperimentSpec
    from worker.training.datasets import load_dataset
    from worker.training.trainer import train_arm

    torch.set_num_threads(1)
    spec_json = service_spec(activations=["relu"], seeds=[0], epochs=arguments.epochs, name="bench single arm")
    spec = ExperimentSpec.model_validate(spec_json)
    device = torch.device("cpu")
    data = load_dataset(spec.dataset, device=device)

    def engine_seconds() -> float:
        started = time.perf_counter()
        train_arm(spec, activation_index=0, seed=0, device=device, data=data)
        return time.perf_counter() - started

    engine_seconds()
    print(f"machine: {machine_description(device)}")
    print(f"load average at the start: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print(f"arm: MNIST-1D MLP 128-128, relu, {arguments.epochs} epochs, batch 128, 1 torch thread")
    settings = {
        # Its own key prefix: other programs may share this Redis.
        "redis": {"BROKER_URL": arguments.redis_url, "ACTLAB_BROKER_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}:"},
        "folder": {},
    }
    rounds: list[dict[str, dict[str, float]]] = []
    with contextlib.ExitStack() as stack:
        services: dict[str, EmbeddedService] = {}
        for broker in arguments.brokers:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"actlab-single-{broker}-")))
            services[broker] = EmbeddedService(folder, settings=settings[broker])
            stack.callback(services[broker].stop)
        for service in services.values():
            service.wait_healthy()
            # Both pool processes warm (torch imported, data cached), as in a long-lived worker.
            service.run_experiment({**spec_json, "name": "warm-up", "seeds": [0, 1]})
            for _ in range(2):
                service_round(service, spec_json)
        contenders = ["engine", *services]
        for index in range(arguments.rounds):
            order = contenders[index % len(contenders) :] + contenders[: index % len(contenders)]
            figures: dict[str, dict[str, float]] = {}
            for name in order:
                figures[name] = (
                    {"seconds": engine_seconds()} if name == "engine" else service_round(services[name], spec_json)
                )
            rounds.append(figures)
            engine = figures["engine"]["seconds"]
            parts = [f"engine {engine:.3f} s"]
            for name in services:
                one = figures[name]
                steps = ", ".join(f"{label} {one[label]:.3f}" for label, _, _ in STEPS)
                parts.append(
                    f"service[{name}] {one['seconds']:.3f} s ({one['seconds'] / engine:.2f}x; POST {one['post']:.3f}, "
                    f"{steps}; client to the end event {one['client']:.2f} s)"
                )
            print(f"round {index + 1}: {'; '.join(parts)}; load {os.getloadavg()[0]:.2f}", flush=True)
    engines = [figures["engine"]["seconds"] for figures in rounds]
    print(f"engine: min {min(engines):.3f} s, median {statistics.median(engines):.3f} s")
    for name in services:
        seconds = [figures[name]["seconds"] for figures in rounds]
        print(
            f"service[{name}] / engine: {min(seconds) / min(engines):.2f}x (minima), "
            f"{statistics.median(seconds) / statistics.median(engines):.2f}x (medians) (goal with Redis: under 1.3x); "
            f"service min {min(seconds):.3f} s, median {statistics.median(seconds):.3f} s"
        )
        for label, _, _ in STEPS:
            values = [figures[name][label] for figures in rounds]
            print(f"  {label}: median {statistics.median(values):.3f} s, min {min(values):.3f} s")
        clients = [figures[name]["client"] for figures in rounds]
        print(f"  POST -> end event at the client: median {statistics.median(clients):.2f} s")
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
