"""Exporting a large metric table: the API's CSV and Parquet encoders against ``sqlite3 -csv`` of the same join.

Fills a fresh SQLite database (migrated as the service's) with one experiment of 25 runs and ``--rows``
epoch rows in all, then, side by side in one run: ``sqlite3 -csv`` of the join the API reads (same
columns and order, to /dev/null), and the service's stream_metric_table as CSV and as Parquet,
iterated to the end as a response would be. Each figure is wall time, its ratio to sqlite3, and the
peak Python allocations during the export (tracemalloc; flat memory means this stays a few MB however
many rows). The HTTP layer is left out: it adds the same per-chunk cost to every encoder.

    python -m bench.export [--rows 1000000]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from sqlalchemy import insert, select

from app.config import Settings
from app.main import create_app
from app.metrics.repository import EPOCH_METRIC_COLUMNS, MetricFilters
from app.metrics.service import OutputFormat, stream_metric_table
from app.migrate import upgrade_database
from app.models import EpochMetric, Run

RUNS_SPEC = {
    "name": "export bench",
    "dataset": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [8]},
    "activations": ["relu", "tanh", "elu", "gelu", "sigmoid"],
    "seeds": [0, 1, 2, 3, 4],
    "training": {"epochs": 1},
    "device": "cpu",
}


def _fill(database: Path, rows: int) -> tuple[object, uuid.UUID]:
    from fastapi.testclient import TestClient

    from app.auth.service import create_api_key

    url = f"sqlite:///{database}"
    upgrade_database(url)
    app = create_app(Settings(DATABASE_URL=url, BROKER_URL="filesystem://", broker_folder=database.parent / "broker"))
    with app.state.session_factory() as session:
        key = create_api_key(session=session, name="bench", is_admin=True).key
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        created = client.post("/v1/experiments", json=RUNS_SPEC)
        created.raise_for_status()
        experiment_id = uuid.UUID(created.json()["id"])
    with app.state.session_factory() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id)))
        per_run = rows // len(run_ids)
        for run_id in run_ids:
            session.execute(
                insert(EpochMetric),
                [
                    {
                        "run_id": run_id,
                        "epoch": epoch,
                        "attempt": 1,
                        "train_loss": 1.0 / epoch,
                        "train_accuracy": 0.5 + 0.4 / epoch,
                        "test_loss": 1.2 / epoch,
                        "test_accuracy": 0.45 + 0.3 / epoch,
                        "epoch_seconds": 0.25,
                        "samples_per_second": 4000.0 + epoch,
                        "lr": 0.001,
                        "grad_norm_ratio": 0.5 / epoch,
                    }
                    for epoch in range(1, per_run + 1)
                ],
            )
            session.commit()
    return app, experiment_id


def _sqlite3_seconds(database: Path, experiment_id: uuid.UUID) -> float:
    fixed = [f"r.{name}" for name in ("id", "activation_label", "seed", "cell_label")]
    values = [f"m.{name}" for name in EPOCH_METRIC_COLUMNS[4:]]
    query = (
        f"SELECT {', '.join(fixed + values)} FROM epoch_metrics m JOIN runs r ON m.run_id = r.id "
        f"WHERE r.experiment_id = '{experiment_id.hex}' "
        "ORDER BY r.cell_index, r.activation_index, r.seed, m.epoch;"
    )
    started = time.perf_counter()
    output = subprocess.run(["sqlite3", "-csv", "-header", str(database), query], capture_output=True, check=True)
    seconds = time.perf_counter() - started
    lines = output.stdout.count(b"\n")
    print(f"sqlite3 -csv: {lines - 1:,} rows, {len(output.stdout) / 2**20:.1f} MiB")
    return seconds


def _export(
    app: object, experiment_id: uuid.UUID, output_format: OutputFormat, *, traced: bool
) -> tuple[float, int, float]:
    """Seconds, bytes and (traced: tracemalloc slows allocation, so timed apart) peak MiB of one export."""
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    chunks = stream_metric_table(
        session_factory=app.state.session_factory,  # type: ignore[attr-defined]
        experiment_id=experiment_id,
        filters=MetricFilters(),
        table="epoch",
        output_format=output_format,
    )
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
    finally:
        chunks.close()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if traced else 0.0
    tracemalloc.stop()
    return seconds, size, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "export.sqlite"
        started = time.perf_counter()
        app, experiment_id = _fill(database, options.rows)
        print(f"filled {options.rows:,} rows in {time.perf_counter() - started:.1f} s")
        baseline = _sqlite3_seconds(database, experiment_id)
        print(f"sqlite3 -csv: {baseline:.2f} s")
        for output_format in ("csv", "parquet"):
            seconds, size, _ = _export(app, experiment_id, output_format, traced=False)  # type: ignore[arg-type]
            _, _, peak = _export(app, experiment_id, output_format, traced=True)  # type: ignore[arg-type]
            print(
                f"API {output_format}: {seconds:.2f} s = {seconds / baseline:.2f}x sqlite3, "
                f"{size / 2**20:.1f} MiB, peak Python allocations {peak:.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
