"""The metrics of a small version-1 experiment as the worker records them, and the script that wrote the golden file.

Issue 12 promises that a version-1 spec gives the same metrics as before factors existed, in every
column but the wall-clock ones (``epoch_seconds``, ``samples_per_second``). ``collect`` trains four
small experiments through the worker's own entry point (``worker.stacked_runner.execute_runs``, the
task's path) on a migrated SQLite database and returns what the database holds afterwards: the
experiment's spec hash, each run's recorded facts and every epoch and layer metric row. It runs on
the commit before factors landed (68fa254^, b31dc54) as well as today, so the same function wrote
``v1_metrics_golden.json`` there and reads today's numbers in tests/worker/test_v1_golden.py.

The four experiments: an MLP on spirals and a CNN on digits, each trained unstacked
(``stack_runs=False``) and stacked (a stack of all eight runs; the CNN stack is forced, since the
engine does not recommend stacking conv nets on a CPU). Each has four activations, two with
learnable parameters (prelu per unit, swish_beta), and two seeds.

To write the golden file again from the old engine (only if the old engine's numbers are wanted
again; a change of today's numbers is what the test is there to catch)::

    git worktree add /tmp/actlab-v1 b31dc54
    ln -s /work/main/.venv /tmp/actlab-v1/.venv
    cd /tmp/actlab-v1 && PYTHONPATH=$PWD .venv/bin/python <this checkout>/tests/worker/v1_golden.py \\
        <this checkout>/tests/worker/v1_metrics_golden.json
    git worktree remove /tmp/actlab-v1

The script imports everything else (``app``, ``worker``, ``tests.worker.conftest``) from
``PYTHONPATH``, that is from the old commit's tree.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOLDEN_PATH = Path(__file__).with_name("v1_metrics_golden.json")

# The wall-clock columns, the only ones allowed to differ. Columns added since the golden file was written
# are collected too and not compared (test_v1_golden compares the golden file's keys).
WALL_CLOCK_COLUMNS = ("epoch_seconds", "samples_per_second")


def _columns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The epoch and layer metric columns compared: the table's value fields less the wall-clock ones."""
    from app.models.epoch_metric import EPOCH_VALUE_FIELDS
    from app.models.layer_metric import LAYER_VALUE_FIELDS

    epoch = tuple(name for name in EPOCH_VALUE_FIELDS if name not in WALL_CLOCK_COLUMNS)
    return epoch, ("layer_name", *LAYER_VALUE_FIELDS)


RUN_COLUMNS = (
    "activation_label",
    "activation_name",
    "status",
    "epochs_completed",
    "diverged_epoch",
    "init_scheme",
    "parameter_count",
    "activation_placement",
    "training_path",
)

_ACTIVATIONS: list[Any] = ["relu", "tanh", {"name": "prelu", "params": {"mode": "unit"}}, "swish_beta"]
MLP_SPEC: dict[str, Any] = {
    "name": "v1 golden mlp",
    "dataset": {"name": "spirals", "params": {"samples": 300}},
    "model": {"kind": "mlp", "hidden": [8, 8]},
    "activations": _ACTIVATIONS,
    "seeds": [0, 1],
    "training": {"epochs": 3, "batch_size": 64, "lr": 0.01, "optimizer": "adamw", "grad_clip": 1.0},
    "device": "cpu",
}
CNN_SPEC: dict[str, Any] = {
    "name": "v1 golden cnn",
    "dataset": {"name": "digits"},
    "model": {"kind": "cnn", "channels": [3], "hidden": [8]},
    "activations": _ACTIVATIONS,
    "seeds": [0, 1],
    "training": {"epochs": 2, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9},
    "device": "cpu",
}
# name -> (spec, stacked)
EXPERIMENTS: dict[str, tuple[dict[str, Any], bool]] = {
    "mlp unstacked": (MLP_SPEC, False),
    "mlp stacked": (MLP_SPEC, True),
    "cnn unstacked": (CNN_SPEC, False),
    "cnn stacked": (CNN_SPEC, True),
}


@contextlib.contextmanager
def _stacking_forced() -> Iterator[None]:
    """Let the worker stack conv nets on a CPU too (it stacks small MLPs there on its own)."""
    import worker.training.stacked as stacked

    recommended = stacked.stacking_recommended
    stacked.stacking_recommended = lambda spec, *, device: (True, "forced for the v1 golden metrics")
    try:
        yield
    finally:
        stacked.stacking_recommended = recommended


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread, so that no reduction is split by the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(name: str, spec: dict[str, Any], stacked: bool, folder: Path) -> dict[str, Any]:
    from sqlalchemy import select

    from app.db import make_engine, session_scope
    from app.migrate import upgrade_database
    from app.models import EpochMetric, Experiment, LayerMetric, Run
    from tests.worker.conftest import add_experiment, one_worker_settings
    from worker.stacked_runner import execute_runs

    epoch_columns, layer_columns = _columns()
    url = f"sqlite:///{folder / (name.replace(' ', '_') + '.db')}"
    upgrade_database(url)
    engine = make_engine(url)
    settings = one_worker_settings(
        folder, stack_runs=stacked, stack_chunk_runs=len(spec["activations"]) * len(spec["seeds"])
    )
    try:
        run_ids = add_experiment(engine, spec)
        forced = _stacking_forced() if stacked else contextlib.nullcontext()
        with forced:
            execute_runs(
                run_ids=run_ids,
                worker_host="golden",
                task_id=f"golden-{uuid.uuid4()}",
                engine=engine,
                settings=settings,
            )
        with session_scope(engine) as session:
            experiment = session.execute(select(Experiment)).scalar_one()
            runs = list(session.execute(select(Run).order_by(Run.activation_index, Run.seed)).scalars())
            result: dict[str, Any] = {"spec_hash": experiment.spec_hash, "runs": []}
            for run in runs:
                epochs = list(
                    session.execute(
                        select(EpochMetric).where(EpochMetric.run_id == run.id).order_by(EpochMetric.epoch)
                    ).scalars()
                )
                layers = list(
                    session.execute(
                        select(LayerMetric)
                        .where(LayerMetric.run_id == run.id)
                        .order_by(LayerMetric.epoch, LayerMetric.layer)
                    ).scalars()
                )
                result["runs"].append(
                    {
                        "activation_index": run.activation_index,
                        "seed": run.seed,
                        **{column: getattr(run, column) for column in RUN_COLUMNS},
                        # Not in the golden file (so not compared): whether the run has its epoch-0 row and layers.
                        "initial_epoch": any(row.epoch == 0 for row in epochs)
                        and any(row.epoch == 0 and row.grad_norm is not None for row in layers),
                        # Epoch 0 (before training) is a later addition of its own; the promise is about epochs >= 1.
                        "epochs": [
                            {"epoch": row.epoch, **{column: getattr(row, column) for column in epoch_columns}}
                            for row in epochs
                            if row.epoch >= 1
                        ],
                        "layers": [
                            {
                                "epoch": row.epoch,
                                "layer": row.layer,
                                **{column: getattr(row, column) for column in layer_columns},
                            }
                            for row in layers
                            if row.epoch >= 1
                        ],
                    }
                )
        return result
    finally:
        engine.dispose()


def collect() -> dict[str, Any]:
    """The four experiments' recorded metrics by name, trained here and now (about 20 s on one core)."""
    with tempfile.TemporaryDirectory() as scratch, _one_thread():
        return {name: _train(name, spec, stacked, Path(scratch)) for name, (spec, stacked) in EXPERIMENTS.items()}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN_PATH
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    payload = {"generated_at_commit": commit, "experiments": collect()}
    target.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target} from commit {commit}")
