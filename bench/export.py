"""Exporting a large metric table: the API's CSV and Parquet against the database's own CSV of the same join.

Fills a fresh database (migrated as the service's) with one experiment of 25 runs and ``--rows`` epoch
rows in all, then, side by side in one run, per database: the database's own CSV writer on the join the
API reads (same columns and order; SQLite: ``sqlite3 -csv``, PostgreSQL: ``psql`` with ``COPY (...) TO
STDOUT``), and the service's stream_metric_table as CSV and as Parquet, iterated to the end as a response
would be. Each export runs in a fresh process, which reports its wall time, the ratio to the database's
CSV, its CPU time (with Arrow's threads) against the client's (on a loaded machine the fairer
figure for SQLite, where sqlite3 does all the work; psql only receives what the server writes), and its
peak resident memory above its idle level (read from /proc: the high-water mark is reset
after a warm-up export of one epoch, so imports and the connection pool count as idle). The HTTP layer is
left out: it adds the same per-chunk cost to every encoder.

    python -m bench.export [--rows 1000000] [--database sqlite postgresql] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select, text

from app.config import Settings
from app.main import create_app
from app.metrics.repository import EPOCH_METRIC_COLUMNS, MetricFilters
from app.metrics.service import OutputFormat, stream_metric_table
from app.migrate import upgrade_database
from app.models import Run

RUNS_SPEC = {
    "name": "export bench",
    "dataset": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [8]},
    "activations": ["relu", "tanh", "elu", "gelu", "sigmoid"],
    "seeds": [0, 1, 2, 3, 4],
    "training": {"epochs": 1},
    "device": "cpu",
}
POSTGRES_ADMIN_URL = os.environ.get("ACTLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The values of epoch e (SQL over the column e): shaped like a training run's, mostly 16-17 significant digits.
_VALUES = {
    "train_loss": "1.0 / e",
    "train_accuracy": "0.5 + 0.4 / e",
    "test_loss": "1.2 / e",
    "test_accuracy": "0.45 + 0.3 / e",
    "epoch_seconds": "0.25",
    "samples_per_second": "4000.0 + e",
    "lr": "0.001",
    "grad_norm_ratio": "0.5 / e",
}


def _app(url: str, folder: Path) -> Any:
    return create_app(Settings(DATABASE_URL=url, BROKER_URL="filesystem://", broker_folder=folder / "broker"))


def _fill(url: str, folder: Path, rows: int) -> uuid.UUID:
    """One experiment of 25 runs with ``rows`` epoch rows in all."""
    from fastapi.testclient import TestClient

    from app.auth.service import create_api_key

    upgrade_database(url)
    app = _app(url, folder)
    with app.state.session_factory() as session:
        key = create_api_key(session=session, name="bench", is_admin=True).key
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        created = client.post("/v1/experiments", json=RUNS_SPEC)
        created.raise_for_status()
        experiment_id = uuid.UUID(created.json()["id"])
    with app.state.session_factory() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id)))
        per_run = rows // len(run_ids)
        # In SQL (generate_series, or SQLite's recursive CTE): a million rows in seconds, not minutes.
        series = (
            "generate_series(1, :count) AS e"
            if url.startswith("postgresql")
            else "(WITH RECURSIVE s(e) AS (SELECT 1 UNION ALL SELECT e + 1 FROM s WHERE e < :count) SELECT e FROM s)"
        )
        statement = text(
            f"INSERT INTO epoch_metrics (run_id, epoch, attempt, created_at, {', '.join(_VALUES)}) "
            f"SELECT :run_id, e, 1, CURRENT_TIMESTAMP, {', '.join(_VALUES.values())} FROM {series}"
        ).bindparams(bindparam("run_id", type_=Run.id.type))
        for run_id in run_ids:
            session.execute(statement, {"run_id": run_id, "count": per_run})
            session.commit()
    return experiment_id


def _join(experiment_id: uuid.UUID, *, postgres: bool) -> str:
    fixed = [f"r.{name}" for name in ("id", "activation_label", "seed", "cell_label")]
    values = [f"m.{name}" for name in EPOCH_METRIC_COLUMNS[4:]]
    key = f"'{experiment_id}'" if postgres else f"'{experiment_id.hex}'"
    return (
        f"SELECT {', '.join(fixed + values)} FROM epoch_metrics m JOIN runs r ON m.run_id = r.id "
        f"WHERE r.experiment_id = {key} ORDER BY r.cell_index, r.activation_index, r.seed, m.epoch"
    )


def _database_csv(url: str, database: str, experiment_id: uuid.UUID) -> tuple[float, float, int]:
    """Seconds, CPU seconds of the client (sqlite3 does all the work; psql only receives) and bytes of the
    database's own CSV of the join."""
    if database == "postgresql":
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        query = f"COPY ({_join(experiment_id, postgres=True)}) TO STDOUT WITH (FORMAT csv, HEADER)"
        command = ["psql", "-X", "-q", plain, "-c", query]
    else:
        command = ["sqlite3", "-csv", "-header", url.removeprefix("sqlite:///"), _join(experiment_id, postgres=False)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, check=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, len(output.stdout)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _export_in_this_process(url: str, folder: str, experiment_id: str, output_format: str) -> dict[str, float]:
    """One export (after a warm-up export of one epoch): seconds, bytes, idle and peak resident MiB."""
    app = _app(url, Path(folder))

    def export(filters: MetricFilters) -> int:
        chunks = stream_metric_table(
            session_factory=app.state.session_factory,
            experiment_id=uuid.UUID(experiment_id),
            filters=filters,
            table="epoch",
            output_format=output_format,  # type: ignore[arg-type]
        )
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
        finally:
            chunks.close()
        return size

    export(MetricFilters(epoch_max=1))
    idle = _rss_kib("VmRSS")
    # Writing 5 to clear_refs resets the peak (VmHWM) to the current resident size (Linux).
    Path("/proc/self/clear_refs").write_text("5")
    started, cpu = time.perf_counter(), time.process_time()
    size = export(MetricFilters())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": size,
        "idle_mib": idle / 1024,
        "peak_mib": _rss_kib("VmHWM") / 1024,
    }


def _export(url: str, folder: Path, experiment_id: uuid.UUID, output_format: OutputFormat) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.export", "--child", url, str(folder), str(experiment_id), output_format]
    output = subprocess.run(command, capture_output=True, check=True, text=True)
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def _database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'export.sqlite'}"
        return
    import psycopg

    name = f"actlab_bench_export_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rpartition('/')[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats; the minimum time is reported")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        print(json.dumps(_export_in_this_process(*options.child)))
        return 0
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores")
    for kind in options.database:
        with tempfile.TemporaryDirectory() as name, _database(kind, Path(name)) as url:
            folder = Path(name)
            started = time.perf_counter()
            experiment_id = _fill(url, folder, options.rows)
            print(f"{kind}: filled {options.rows:,} rows in {time.perf_counter() - started:.1f} s")
            baseline: list[float] = []
            baseline_cpu: list[float] = []
            results: dict[str, list[dict[str, float]]] = {"csv": [], "parquet": []}
            for _round in range(options.rounds):
                seconds, cpu, size = _database_csv(url, kind, experiment_id)
                baseline.append(seconds)
                baseline_cpu.append(cpu)
                for output_format in results:
                    results[output_format].append(_export(url, folder, experiment_id, output_format))  # type: ignore[arg-type]
            reference = "sqlite3 -csv" if kind == "sqlite" else "COPY ... TO STDOUT (psql)"
            print(f"{kind}: {reference}: {min(baseline):.2f} s, CPU {min(baseline_cpu):.2f} s ({size / 2**20:.1f} MiB)")
            for output_format, runs in results.items():
                best = min(run["seconds"] for run in runs)
                cpu = min(run["cpu_seconds"] for run in runs)
                extra = max(run["peak_mib"] - run["idle_mib"] for run in runs)
                print(
                    f"{kind}: API {output_format}: {best:.2f} s = {best / min(baseline):.2f}x, "
                    f"CPU {cpu:.2f} s = {cpu / max(min(baseline_cpu), 1e-9):.2f}x the client's, "
                    f"{runs[0]['bytes'] / 2**20:.1f} MiB, peak resident {extra:.1f} MiB above idle "
                    f"({runs[0]['idle_mib']:.0f} MiB)"
                )
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
