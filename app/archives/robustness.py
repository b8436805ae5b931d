"""The robustness.csv member of an archive: a run's robustness rows (spec version 2's evaluation block).

Archives from before the table, and experiments without an evaluation block, have no rows; an import
then stores none. Rows are bounded by the archive's spec: each run has at most one row per (kind,
strength) its cell's evaluation block asks for.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.archives.members import archive_error, numeric, optional, optional_integer, read_csv
from app.models.robustness import ROBUSTNESS_VALUE_FIELDS
from app.spec import ExperimentSpec
from app.spec_evaluation import ROBUSTNESS_KINDS
from app.spec_factors import expand_cells

ROBUSTNESS_MEMBER = "robustness.csv"


def robustness_rows_per_run(spec: ExperimentSpec) -> int:
    """The most robustness rows one run of the spec records: the strengths of the largest cell's block."""
    return max(
        len(cell.spec.evaluation.strengths()) if cell.spec.evaluation is not None else 0 for cell in expand_cells(spec)
    )


def read_robustness(
    members: Mapping[str, bytes], *, spec: ExperimentSpec, mapping: Mapping[str, uuid.UUID], max_rows: int
) -> list[dict[str, Any]]:
    """The member's rows as insert rows for the new runs, checked whole before any write; none without it."""
    if ROBUSTNESS_MEMBER not in members:
        return []
    name = ROBUSTNESS_MEMBER
    bound = min(len(mapping) * robustness_rows_per_run(spec), max_rows)
    frame = read_csv(name, members[name], ("run_id", "kind", "strength", "accuracy"), max_rows=bound)
    numeric(frame, ("strength", *ROBUSTNESS_VALUE_FIELDS), name)
    unknown = ~frame["run_id"].astype(str).isin(set(mapping))
    if unknown.any():
        position = int(np.flatnonzero(unknown.to_numpy())[0])
        raise archive_error(
            f"{name}.run_id", f"row {position + 1}: run {frame['run_id'].iloc[position]} is not in runs.csv"
        )
    bad_kind = ~frame["kind"].astype(str).isin(set(ROBUSTNESS_KINDS))
    if bad_kind.any():
        position = int(np.flatnonzero(bad_kind.to_numpy())[0])
        raise archive_error(
            f"{name}.kind",
            f"row {position + 1}: {frame['kind'].iloc[position]!r} must be one of {', '.join(ROBUSTNESS_KINDS)}",
        )
    strengths = frame["strength"].to_numpy(dtype=float)
    bad_strength = ~np.isfinite(strengths) | (strengths < 0)
    if bad_strength.any():
        position = int(np.flatnonzero(bad_strength)[0])
        raise archive_error(f"{name}.strength", f"row {position + 1}: a strength is a finite number of at least 0")
    duplicated = frame.duplicated(subset=["run_id", "kind", "strength"])
    if duplicated.any():
        position = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise archive_error(name, f"row {position + 1} repeats the key (run_id, kind, strength) of an earlier row")
    return [_row(record, mapping, position) for position, record in enumerate(frame.to_dict("records"), start=1)]


def _row(record: dict[str, Any], mapping: Mapping[str, uuid.UUID], position: int) -> dict[str, Any]:
    values = {field: optional(record.get(field)) for field in ROBUSTNESS_VALUE_FIELDS}
    return {
        "run_id": mapping[str(record["run_id"])],
        "kind": str(record["kind"]),
        "strength": float(record["strength"]),
        "attempt": optional_integer(record.get("attempt"), f"{ROBUSTNESS_MEMBER}.row {position}.attempt") or 0,
        **{field: value if value is None or math.isfinite(value) else None for field, value in values.items()},
    }
