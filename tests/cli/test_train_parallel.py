"""``actlab train`` on the engine's fast path: the same numbers in one process, in several and unstacked; factorial
specs cell by cell; Ctrl-C keeps what was trained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.cli import main
from app.spec import ExperimentSpec
from worker.local_runner import plan_local
from worker.training.trainer import train_experiment

REPOSITORY = Path(__file__).resolve().parents[2]
WALL_CLOCK = ["epoch_seconds", "samples_per_second"]

SPEC: dict[str, Any] = {
    "name": "parallel",
    "dataset": {"name": "spirals", "params": {"samples": 400}},
    "model": {"kind": "mlp", "hidden": [8, 8]},
    "activations": ["relu", "tanh", {"name": "prelu"}],
    "seeds": [0, 1, 2],
    "training": {"epochs": 3, "batch_size": 32, "lr": 0.01},
    "device": "cpu",
}


def _train(tmp_path: Path, spec: dict[str, Any], *arguments: str, name: str) -> pd.DataFrame:
    spec_path = tmp_path / f"{name}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / f"{name}.csv"
    assert main(["train", str(spec_path), "--out", str(out), *arguments]) == 0
    return pd.read_csv(out)


def test_one_process_several_processes_and_the_ordinary_trainer_give_the_same_numbers(tmp_path: Path) -> None:
    plan = plan_local(ExperimentSpec.model_validate(SPEC), device="cpu", processes=2)
    assert plan.processes == 2 and all(job.stacked for job in plan.jobs)
    assert sorted(len(jobs) for jobs in plan.assignments) == [1, 1]

    alone = _train(tmp_path, SPEC, "--processes", "1", name="one")
    forked = _train(tmp_path, SPEC, "--processes", "2", name="two")
    assert len(alone) == 3 * 3 * (1 + 3)  # epoch 0, the network at initialisation, and three trained epochs
    assert sorted(set(alone.epoch)) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(alone.drop(columns=WALL_CLOCK), forked.drop(columns=WALL_CLOCK))

    # The arms trained one by one by the ordinary trainer give the same rows.
    ordinary = {
        (result.arm.activation_index, result.arm.seed, report.epoch): report.as_row()
        for result in train_experiment(ExperimentSpec.model_validate(SPEC), device="cpu")
        for report in result.outcome.reports
    }
    for row in forked.itertuples():
        expected = ordinary[(row.activation_index, row.seed, row.epoch)]
        for column in ("train_loss", "test_loss", "test_accuracy", "grad_norm_ratio"):
            assert getattr(row, column) == pytest.approx(expected[column], rel=1e-5, abs=1e-7), column


def test_a_factorial_spec_trains_every_cell_with_its_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factorial = {
        **SPEC,
        "version": 2,
        "activations": ["relu", "tanh"],
        "seeds": [0, 1],
        "training": {**SPEC["training"], "epochs": 2},
        "factors": {"model.hidden": [[8], [8, 8]], "training.lr": [0.01, 0.05]},
    }
    rows = _train(tmp_path, factorial, name="factorial")
    assert len(rows) == 4 * 2 * 2 * (1 + 2)
    assert {"cell_index", "cell", "model.hidden", "training.lr"} <= set(rows.columns)
    assert set(rows["model.hidden"]) == {"[8]", "[8,8]"}
    assert set(rows["training.lr"].astype(str)) == {"0.01", "0.05"}
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["cell", "activation"]
    assert len(table) == 1 + 4 * 2

    # One cell equals the plain spec at that cell's levels, trained on its own.
    plain = {**SPEC, "activations": ["relu", "tanh"], "seeds": [0, 1], "model": {"kind": "mlp", "hidden": [8, 8]}}
    plain["training"] = {**SPEC["training"], "epochs": 2, "lr": 0.05}
    alone = _train(tmp_path, plain, name="plain")
    cell = rows[(rows["model.hidden"] == "[8,8]") & (rows["training.lr"] == 0.05)]
    columns = ["activation", "seed", "epoch", "train_loss", "test_loss", "test_accuracy"]
    pd.testing.assert_frame_equal(cell[columns].reset_index(drop=True), alone[columns].reset_index(drop=True))


def test_ctrl_c_lets_every_process_end_its_arms_and_keeps_the_rows(tmp_path: Path) -> None:
    long = {**SPEC, "dataset": {"name": "spirals", "params": {"samples": 4000}}, "training": {"epochs": 200}}
    spec_path, out = tmp_path / "long.json", tmp_path / "long.csv"
    spec_path.write_text(json.dumps(long), encoding="utf-8")
    # As from a terminal: SIGINT to the whole process group, raising KeyboardInterrupt in the command (a test run
    # started in the background hands its children SIGINT ignored, and Python then leaves it ignored).
    command = [
        sys.executable,
        "-c",
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'actlab'; runpy.run_module('app.cli', run_name='__main__')",
        *("train", str(spec_path), "--out", str(out), "--processes", "2"),
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPOSITORY, start_new_session=True
    )
    assert process.stderr is not None
    seen: list[bytes] = []
    progressing = threading.Event()

    def read_errors() -> None:
        assert process.stderr is not None
        while chunk := process.stderr.read1(4096):  # type: ignore[attr-defined]
            seen.append(chunk)
            if b"test_acc" in b"".join(seen):
                progressing.set()
        progressing.set()  # the command ended before it trained: the assertions below say why

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    try:
        assert progressing.wait(timeout=300), b"".join(seen).decode()  # a hang guard, not a speed check
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=300)  # a hang guard, not a speed check
        reader.join(timeout=60)
        assert process.stdout is not None
        stdout = process.stdout.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    errors = b"".join(seen).decode()
    assert process.returncode == 130, errors
    assert "Traceback" not in errors
    assert "interrupted: the table and files hold the arms finished so far" in errors
    rows = pd.read_csv(out)
    assert 0 < len(rows) < 3 * 3 * 201
    assert set(rows.status) == {"cancelled"}
    # Every arm kept its epochs in order up to where it stopped.
    for _key, arm in rows.groupby(["activation", "seed"]):
        assert list(arm.epoch) == list(range(0, len(arm)))
    assert stdout.decode().splitlines()[0].split()[0] == "activation"
