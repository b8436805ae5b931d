"""Peak memory and time of importing the largest archive a lowered ACTLAB_MAX_IMPORT_ROWS allows.

Builds an archive in memory that fills the bound of its own spec (by default 2 activations x 15 seeds x 200
epochs, an MLP of 32 hidden layers: 6,000 epoch rows and 198,000 layer rows), imports it with the service
into a fresh SQLite database in a child process, and reports the child's peak Python allocations over the import (tracemalloc)
and its peak resident set growth (resource.getrusage). Run: ``python -m bench.import_memory [--rows N]
[--activations A] [--seeds S]``.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

EPOCHS = 200
HIDDEN = [8] * 32
# --seeds 29 with all five: 986,000 rows, about the default ACTLAB_MAX_IMPORT_ROWS.
ACTIVATIONS = ["relu", "tanh", "elu", "gelu", "sigmoid"]


def spec(activations: list[str], seeds: list[int]) -> dict[str, object]:
    return {
        "name": "import memory bench",
        "dataset": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": HIDDEN},
        "activations": activations,
        "seeds": seeds,
        "training": {"epochs": EPOCHS},
        "device": "cpu",
    }


def build_archive(activations: list[str], seeds: list[int]) -> bytes:
    """A zip shaped like GET .../export's, as many rows as its spec can produce."""
    runs = [
        {
            "run_id": str(uuid.uuid4()),
            "activation": name,
            "activation_index": index,
            "seed": seed,
            "status": "succeeded",
        }
        for index, name in enumerate(activations)
        for seed in seeds
    ]
    epochs = range(1, EPOCHS + 1)
    layers = [f"hidden{index + 1}" for index in range(len(HIDDEN))] + ["output"]
    random = np.random.default_rng(0)
    epoch_keys = pd.DataFrame([(run["run_id"], epoch) for run in runs for epoch in epochs], columns=["run_id", "epoch"])
    metrics = epoch_keys.assign(train_loss=random.random(len(epoch_keys)), test_accuracy=random.random(len(epoch_keys)))
    layer_keys = pd.DataFrame(
        [
            (run_id, epoch, layer, name)
            for run_id, epoch in epoch_keys.itertuples(index=False)
            for layer, name in enumerate(layers)
        ],
        columns=["run_id", "epoch", "layer", "layer_name"],
    )
    layer_metrics = layer_keys.assign(
        grad_norm=random.random(len(layer_keys)), dead_fraction=random.random(len(layer_keys))
    )
    members = {
        "spec.json": json.dumps(spec(activations, seeds)).encode(),
        "runs.csv": pd.DataFrame(runs).to_csv(index=False).encode(),
        "metrics.csv": metrics.to_csv(index=False).encode(),
        "layer_metrics.csv": layer_metrics.to_csv(index=False).encode(),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def measure(archive_path: Path, rows: int) -> dict[str, float]:
    """In this (child) process: import the archive into a fresh SQLite database; memory and time of the import."""
    from app.archives.service import import_archive
    from app.config import Settings
    from app.db import make_engine, session_factory
    from app.migrate import upgrade_database

    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'bench.db'}"
    upgrade_database(url)
    settings = Settings(DATABASE_URL=url, max_import_rows=rows)
    content = archive_path.read_bytes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    with session_factory(make_engine(url, settings=settings))() as session:
        outcome = import_archive(session=session, content=content, settings=settings)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "archive_mib": len(content) / 2**20,
        "rows": outcome.epoch_metrics + outcome.layer_metrics,
        "python_peak_mib": peak / 2**20,
        "rss_peak_growth_mib": (rss_after - rss_before) / 1024,
        "seconds_with_tracemalloc": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=204_000, help="ACTLAB_MAX_IMPORT_ROWS for the import")
    parser.add_argument("--activations", type=int, default=2, help="how many of ACTIVATIONS the spec compares")
    parser.add_argument("--seeds", type=int, default=15, help="seeds of the spec")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(measure(arguments.child, arguments.rows)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "archive.zip"
        path.write_bytes(build_archive(ACTIVATIONS[: arguments.activations], list(range(arguments.seeds))))
        # A child process: its peak RSS is the import's alone, not the archive building's.
        result = subprocess.run(
            [sys.executable, "-m", "bench.import_memory", "--rows", str(arguments.rows), "--child", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
    print(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
