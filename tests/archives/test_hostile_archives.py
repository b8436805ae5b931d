"""Hostile archives on import: each malformed one is a 422 naming the member and the problem, and writes nothing.

Each case starts from a real export of the fake finished experiment (tests/results/conftest.py) and breaks one
member the way an attacker or a damaged download would: deflate data that does not inflate, an encryption flag,
a compression method the server does not read, JSON nested thousands of levels deep, integers an INTEGER
column cannot hold.
"""

from __future__ import annotations

import io
import json
import sqlite3
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.archives import repository
from app.archives.members import ARCHIVE_MAX_JSON_DEPTH
from app.config import Settings
from app.models import EpochMetric, Experiment, LayerMetric, Run
from tests.results import conftest as results_fixtures

# The results tests' app and fake finished experiment (tests/results/conftest.py), used here as they are.
settings = results_fixtures.settings
app = results_fixtures.app
client = results_fixtures.client
db = results_fixtures.db
finished_experiment = results_fixtures.finished_experiment

Members = dict[str, bytes]


def _members(archive: bytes) -> Members:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def _zip(members: Members, *, compression: int = zipfile.ZIP_DEFLATED, special: str = "") -> bytes:
    """MEMBERS as a zip; the member named SPECIAL gets COMPRESSION, the others deflate."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
            info.compress_type = compression if name == special else zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def _patched(archive: bytes, name: str, patch: Callable[[bytearray, int, int], None]) -> bytes:
    """ARCHIVE with PATCH(data, local header offset, central header offset) applied to member NAME's headers."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        local = opened.getinfo(name).header_offset
    encoded = name.encode()
    central = next(
        position
        for position in range(len(data))
        if data[position : position + 4] == b"PK\x01\x02"
        and data[position + 46 : position + 46 + len(encoded)] == encoded
    )
    patch(data, local, central)
    return bytes(data)


def _corrupt_deflate(members: Members) -> bytes:
    archive = _zip(members)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        info = opened.getinfo("metrics.csv")
    data = bytearray(archive)
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    # 0xff opens a deflate block of the reserved type 3: zlib refuses it ("invalid block type").
    data[start : start + 4] = b"\xff\xff\xff\xff"
    return bytes(data)


def _unknown_method(members: Members) -> bytes:
    def method_99(data: bytearray, local: int, central: int) -> None:
        data[local + 8 : local + 10] = (99).to_bytes(2, "little")
        data[central + 10 : central + 12] = (99).to_bytes(2, "little")

    return _patched(_zip(members, compression=zipfile.ZIP_STORED, special="runs.csv"), "runs.csv", method_99)


def _encrypted(members: Members) -> bytes:
    def flag_encrypted(data: bytearray, local: int, central: int) -> None:
        data[local + 6] |= 0x1
        data[central + 8] |= 0x1

    return _patched(_zip(members), "layer_metrics.csv", flag_encrypted)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _with_json(name: str, key: str, depth: int) -> Callable[[Members], bytes]:
    def tamper(members: Members) -> bytes:
        loaded = json.loads(members[name])
        loaded[key] = "PLACEHOLDER"
        members[name] = json.dumps(loaded).replace('"PLACEHOLDER"', _nested(depth)).encode()
        return _zip(members)

    return tamper


def _with_cell(name: str, column: str, value: str) -> Callable[[Members], bytes]:
    def tamper(members: Members) -> bytes:
        frame = pd.read_csv(io.BytesIO(members[name]), dtype=str, keep_default_na=False)
        frame[column] = frame[column].astype(object) if column in frame.columns else ""
        frame.loc[0, column] = value
        members[name] = frame.to_csv(index=False).encode()
        return _zip(members)

    return tamper


CASES: dict[str, tuple[Callable[[Members], bytes], str, str]] = {
    "corrupt deflate": (_corrupt_deflate, "archive.metrics.csv", "damaged"),
    "encryption flag": (_encrypted, "archive.layer_metrics.csv", "encrypted"),
    "bzip2 compression": (
        lambda members: _zip(members, compression=zipfile.ZIP_BZIP2, special="spec.json"),
        "archive.spec.json",
        "compression method 12",
    ),
    "unknown compression method": (_unknown_method, "archive.runs.csv", "compression method 99"),
    "spec.json nested past the recursion limit": (
        lambda members: _zip({**members, "spec.json": _nested(100_000).encode()}),
        "archive.spec.json",
        "nests deeper",
    ),
    "spec.json nested past the depth limit": (
        _with_json("spec.json", "description", ARCHIVE_MAX_JSON_DEPTH + 1),
        "archive.spec.json",
        "nests deeper",
    ),
    "experiment.json nested deep": (
        _with_json("experiment.json", "error", 100_000),
        "archive.experiment.json",
        "nests deeper",
    ),
    "runs.csv info nested deep": (
        _with_cell("runs.csv", "info", _nested(100_000)),
        "archive.runs.csv.row 1.info",
        "nests deeper",
    ),
    "layer_metrics.csv parameters nested deep": (
        _with_cell("layer_metrics.csv", "activation_parameters", _nested(ARCHIVE_MAX_JSON_DEPTH + 5)),
        "archive.layer_metrics.csv.row 1.activation_parameters",
        "nests deeper",
    ),
    "layer index 1e30": (_with_cell("layer_metrics.csv", "layer", "1e30"), "archive.layer_metrics.csv.layer", "range"),
    "epoch attempt 1e30": (_with_cell("metrics.csv", "attempt", "1e30"), "archive.metrics.csv", "range"),
    "run parameter count beyond int32": (
        _with_cell("runs.csv", "parameter_count", str(2**40)),
        "archive.runs.csv.row 1.parameter_count",
        "range",
    ),
    "run training seconds not a number": (
        _with_cell("runs.csv", "training_seconds", "soon"),
        "archive.runs.csv.row 1.training_seconds",
        "not a number",
    ),
    "experiment error not text": (
        _with_json("experiment.json", "error", 2),
        "archive.experiment.json.error",
        "must be text",
    ),
}


def _table_counts(db: Session) -> dict[str, int]:
    db.expire_all()
    return {
        model.__tablename__: int(db.scalar(select(func.count()).select_from(model)) or 0)
        for model in (Experiment, Run, EpochMetric, LayerMetric)
    }


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_archive_is_a_422_naming_the_member_and_writes_nothing(
    case: str, client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    tamper, location, problem = CASES[case]
    exported = client.get(f"/v1/experiments/{finished_experiment}/export")
    assert exported.status_code == 200
    archive = tamper(_members(exported.content))
    before = _table_counts(db)
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(location in detail["loc"] and problem in detail["msg"] for detail in details), details
    assert _table_counts(db) == before


def _repeated_rows(name: str, times: int) -> Callable[[Members], bytes]:
    def tamper(members: Members) -> bytes:
        frame = pd.read_csv(io.BytesIO(members[name]), dtype=str, keep_default_na=False)
        members[name] = pd.concat([frame] * times).to_csv(index=False).encode()
        return _zip(members)

    return tamper


def test_an_archive_with_more_rows_than_its_spec_could_produce_is_refused(
    client: TestClient, finished_experiment: uuid.UUID, db: Session
) -> None:
    # The fake spec (24 arms, 4 epochs, an MLP of 2 hidden layers + output) allows 24 x 4 x 3 = 288 layer rows.
    exported = client.get(f"/v1/experiments/{finished_experiment}/export")
    before = _table_counts(db)
    for name, times in (("layer_metrics.csv", 2), ("metrics.csv", 2), ("runs.csv", 2)):
        archive = _repeated_rows(name, times)(_members(exported.content))
        response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert detail["loc"] == f"archive.{name}"
        assert "more than the" in detail["msg"]
    assert _table_counts(db) == before


def test_the_import_row_limit_counts_epoch_and_layer_rows_together(
    client: TestClient, finished_experiment: uuid.UUID, settings: Settings, db: Session
) -> None:
    exported = client.get(f"/v1/experiments/{finished_experiment}/export")
    members = _members(exported.content)
    rows = {name: len(pd.read_csv(io.BytesIO(members[name]))) for name in ("metrics.csv", "layer_metrics.csv")}
    settings.max_import_rows = sum(rows.values()) - 1
    before = _table_counts(db)
    response = client.post(
        "/v1/experiments/import", content=exported.content, headers={"Content-Type": "application/zip"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == "archive.layer_metrics.csv"
    assert f"{rows['layer_metrics.csv'] - 1} rows" in response.json()["detail"][0]["msg"]
    assert _table_counts(db) == before
    settings.max_import_rows = sum(rows.values())
    response = client.post(
        "/v1/experiments/import", content=exported.content, headers={"Content-Type": "application/zip"}
    )
    assert response.status_code == 201, response.text


def test_an_import_that_fails_midway_leaves_nothing_behind(
    client: TestClient, finished_experiment: uuid.UUID, settings: Settings, db: Session
) -> None:
    # Small batches: the epoch rows and most layer rows are committed before the last layer row fails.
    settings.import_batch_rows = 10
    exported = client.get(f"/v1/experiments/{finished_experiment}/export")
    members = _members(exported.content)
    frame = pd.read_csv(io.BytesIO(members["layer_metrics.csv"]), dtype=str, keep_default_na=False)
    frame.loc[len(frame) - 1, "activation_parameters"] = "{not json"
    members["layer_metrics.csv"] = frame.to_csv(index=False).encode()
    before = _table_counts(db)
    response = client.post("/v1/experiments/import", content=_zip(members), headers={"Content-Type": "application/zip"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == f"archive.layer_metrics.csv.row {len(frame)}.activation_parameters"
    assert _table_counts(db) == before


def test_a_large_import_lets_another_writer_in_between_its_batches(
    client: TestClient, finished_experiment: uuid.UUID, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two batches the import holds no write lock: a writer that will not wait (timeout 0) gets in,
    as a worker's heartbeat must."""
    settings.import_batch_rows = 50
    database = settings.database_url.removeprefix("sqlite:///")
    writes_between_batches: list[bool] = []
    insert_batch = repository.insert_metric_rows

    def checking_insert(**arguments: Any) -> None:
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            writes_between_batches.append(True)
        except sqlite3.OperationalError:
            writes_between_batches.append(False)
        finally:
            other.close()
        insert_batch(**arguments)

    monkeypatch.setattr(repository, "insert_metric_rows", checking_insert)
    exported = client.get(f"/v1/experiments/{finished_experiment}/export")
    response = client.post(
        "/v1/experiments/import", content=exported.content, headers={"Content-Type": "application/zip"}
    )
    assert response.status_code == 201, response.text
    assert len(writes_between_batches) > 2
    assert all(writes_between_batches)
