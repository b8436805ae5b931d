"""Version-1 specs give the same metrics as before factors landed (issue 12).

tests/worker/v1_golden.py trains four small v1 experiments (MLP and CNN, unstacked and stacked, four
activations of which two learn, two seeds) through the worker and reads back the database;
v1_metrics_golden.json holds what the commit before factors (b31dc54) recorded for them. Every column
but the wall-clock ones (``epoch_seconds``, ``samples_per_second``) must match, for epochs >= 1 (an
epoch-0 row, before training, is a later addition of its own; columns added since are not compared), as
must each run's recorded facts and the experiment's spec hash.

Tolerance: relative 1e-5 (absolute 1e-9 near zero). On the machine that wrote the file the numbers
came out identical (2026-12-03, 2-core CPU, torch on one thread); the tolerance is there for another CPU, whose
float32 kernels may sum in another order (the last bits, growing slowly over steps: the stacked-versus-unstacked
drift measured in tests/training/test_stacked.py is at most 6e-6 relative in activation means after 3 epochs,
4e-7 elsewhere). On 2026-12-04 the same commit on a host whose CPU flags show AVX2 and no AVX-512 gave five CNN
values up to 2e-6 relative off (activation means near zero and a learnable slope's minimum), over the 1e-6
this test first had. Accuracies and dead/saturated fractions are counts over a few hundred examples, so any
real change moves them by far more than the tolerance.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tests.worker.v1_golden import GOLDEN_PATH, collect

RELATIVE = 1e-5
ABSOLUTE = 1e-9


def _differences(expected: Any, actual: Any, where: str) -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        # Keys added since the golden file was written (new columns) are not compared; a lost one is a difference.
        if missing := set(expected) - set(actual):
            return [f"{where}: missing {sorted(missing)}"]
        return [found for key in expected for found in _differences(expected[key], actual[key], f"{where}.{key}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items != {len(actual)}"]
        return [
            found
            for index, (left, right) in enumerate(zip(expected, actual, strict=True))
            for found in _differences(left, right, f"{where}[{index}]")
        ]
    numbers = (int, float)
    if isinstance(expected, float) and isinstance(actual, numbers) and not isinstance(actual, bool):
        if math.isnan(expected) and math.isnan(actual):
            return []
        if math.isclose(expected, actual, rel_tol=RELATIVE, abs_tol=ABSOLUTE):
            return []
        return [f"{where}: {expected!r} != {actual!r}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def test_v1_specs_record_the_metrics_the_engine_recorded_before_factors() -> None:
    golden = json.loads(GOLDEN_PATH.read_text())
    actual = json.loads(json.dumps(collect()))  # the same JSON round trip the golden file went through
    assert set(actual) == set(golden["experiments"])
    assert not {"epoch_seconds", "samples_per_second"} & set(
        golden["experiments"]["mlp stacked"]["runs"][0]["epochs"][0]
    )
    # Every run has its epoch-0 row (the network at initialisation, with layer diagnostics) beside them.
    assert all(run["initial_epoch"] for experiment in actual.values() for run in experiment["runs"])
    differences = _differences(golden["experiments"], actual, "")
    assert not differences, f"{len(differences)} values differ from the v1 golden metrics, first: {differences[:10]}"
    # The file is what it claims to be: every run trained, on both paths, every epoch recorded.
    for name, experiment in golden["experiments"].items():
        paths = {run["training_path"] for run in experiment["runs"]}
        assert paths == {"stacked" if name.endswith(" stacked") else "unstacked"}
        assert all(run["status"] == "succeeded" and run["epochs"] for run in experiment["runs"])
