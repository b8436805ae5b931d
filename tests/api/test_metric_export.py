"""CSV and Parquet exports of the metric tables (app.metrics.export): the same text (SQLite) or the same values
(PostgreSQL's own CSV layout) and the same rows as the reference encoders over SQLAlchemy's rows, with filters,
factor columns and awkward values; the two databases' CSV of the same runs read back by pandas to the same
values, bit for bit; the batch settings; and a stream that reads a batch only when the one before has been sent."""

from __future__ import annotations

import io
import json
import math
import random
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from app.metrics import export, parquet, repository
from app.metrics.repository import MetricFilters
from app.metrics.service import stream_metric_table
from app.models import EpochMetric, LayerMetric, RobustnessResult, Run
from app.streaming import csv_chunks
from tests.api.conftest import postgres_client_of, small_spec

# Values whose text differs between Arrow's and repr's layouts, or that CSV must keep apart.
AWKWARD_FLOATS = [1.0, -0.0, 0.1, 1e-05, 3e-05, 0.0001, 2.5e-07, 12345678901.5, 1e16, 1.5e300, 5e-324, math.inf]


def _spec() -> dict[str, Any]:
    return small_spec(
        version=2,
        activations=[{"name": "relu", "label": 'relu, "plain"'}, "tanh"],
        factors={"model.hidden": [[8], [8, 8]], "training.lr": [0.01, 0.001]},
    )


def _fill(client: TestClient, session_factory: sessionmaker[Session]) -> uuid.UUID:
    """A factorial experiment (8 runs) with 5 epochs of 2 layers each and 3 robustness rows: awkward floats, nulls, JSON."""
    experiment_id = uuid.UUID(client.post("/v1/experiments", json=_spec()).json()["id"])
    generator = random.Random(7)
    with session_factory() as session:
        # In table order, so that both databases give each run the same values.
        order = (Run.cell_index, Run.activation_index, Run.seed)
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id).order_by(*order)))
        epochs, layers = [], []
        for number, run_id in enumerate(run_ids):
            for epoch in range(1, 6):
                value = AWKWARD_FLOATS[(number + epoch) % len(AWKWARD_FLOATS)]
                epochs.append(
                    {
                        "run_id": run_id,
                        "epoch": epoch,
                        "attempt": 1,
                        "train_loss": value,
                        "train_accuracy": generator.random(),
                        "test_loss": -value,
                        "test_accuracy": None if epoch == 2 else generator.random() * 10 ** generator.randint(-8, 18),
                        "lr": 0.001,
                        "samples_per_second": 4000.0 + epoch,
                        "gradient_flag": "vanishing" if epoch == 5 else None,
                    }
                )
                for layer in (0, 1):
                    layers.append(
                        {
                            "run_id": run_id,
                            "epoch": epoch,
                            "layer": layer,
                            "layer_name": f"hidden.{layer}" if layer else 'odd, "name"',
                            "attempt": 1,
                            "grad_norm": value * (layer + 1),
                            "dead_fraction": None if layer else 0.25,
                            "activation_parameters": {"slope": value if math.isfinite(value) else 0.5, "note": "a,b"}
                            if layer == 0
                            else None,
                        }
                    )
        robustness = [
            {
                "run_id": run_id,
                "kind": kind,
                "strength": strength,
                "attempt": 1,
                "accuracy": 0.5 + strength,
                "loss": loss,
            }
            for run_id in run_ids
            for kind, strength, loss in (("noise", 0.1, 0.75), ("fgsm", 0.0, None), ("fgsm", 3e-05, math.inf))
        ]
        session.execute(insert(RobustnessResult), robustness)
        session.execute(insert(EpochMetric), epochs)
        session.execute(insert(LayerMetric), layers)
        session.commit()
    return experiment_id


def _reference_csv(session_factory: sessionmaker[Session], experiment_id: uuid.UUID, table: str, filters: Any) -> str:
    """The CSV that csv_chunks writes over SQLAlchemy's rows (the encoder the API used before the export)."""
    with session_factory() as session:
        columns = repository.metric_columns(session=session, experiment_id=experiment_id, table=table)
        rows = list(
            repository.iterate_table(session=session, experiment_id=experiment_id, table=table, filters=filters)
        )
    return "".join(csv_chunks(columns, rows))


def _reference_rows(session_factory: sessionmaker[Session], experiment_id: uuid.UUID, table: str, filters: Any) -> Any:
    """SQLAlchemy's rows as a Parquet file of them holds them: text columns as parquet.text_value writes them."""
    with session_factory() as session:
        columns = repository.metric_columns(session=session, experiment_id=experiment_id, table=table)
        rows = list(
            repository.iterate_table(session=session, experiment_id=experiment_id, table=table, filters=filters)
        )
    schema = parquet.metric_schema(columns, table)
    text = [pa.types.is_string(field.type) for field in schema]
    return [
        {
            name: parquet.text_value(value) if is_text else value
            for name, value, is_text in zip(columns, row, text, strict=True)
        }
        for row in rows
    ]


FILTERS = [
    ("epoch", MetricFilters()),
    ("epoch", MetricFilters(activation="tanh", epoch_min=2, epoch_max=4)),
    ("epoch", MetricFilters(factor_levels=(("model.hidden", "[8,8]"),), seed=1)),
    ("layer", MetricFilters()),
    ("layer", MetricFilters(layer=0, activation='relu, "plain"', factor_levels=(("training.lr", "0.001"),))),
    ("robustness", MetricFilters()),
    ("robustness", MetricFilters(kind="fgsm", seed=0)),
]


def _export(
    session_factory: sessionmaker[Session], experiment_id: uuid.UUID, table: str, filters: Any, fmt: str
) -> bytes:
    chunks = stream_metric_table(
        session_factory=session_factory,
        experiment_id=experiment_id,
        filters=filters,
        table=table,  # type: ignore[arg-type]
        output_format=fmt,  # type: ignore[arg-type]
        batch_rows=7,
    )
    try:
        return b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in chunks)
    finally:
        chunks.close()


def _is_postgres(client: TestClient) -> bool:
    return bool(client.app.state.session_factory.kw["bind"].dialect.name == "postgresql")  # type: ignore[attr-defined]


def _json_value(text: str) -> Any:
    # Numbers as floats, bit for bit: jsonb writes 1.5e300 as its 301 digits, and has no -0.
    return json.loads(text, parse_int=float, parse_float=lambda digits: float(digits) or 0.0)


def _exact_values(csv_text: str) -> dict[str, list[Any]]:
    """The CSV as pandas reads it: each column's dtype and values, floats as their bits (float.hex tells -0.0 from
    0.0), JSON text as the JSON value it holds (the key order and number layout of JSON text are not values)."""
    frame = pd.read_csv(io.StringIO(csv_text))
    values: dict[str, list[Any]] = {}
    for name in frame.columns:
        column = frame[name]
        if column.dtype.kind == "f":
            values[name] = ["float64", *(float(value).hex() for value in column)]
        elif name in ("activation_parameters", "time_grad_norms"):
            values[name] = [str(column.dtype), *(None if pd.isna(text) else _json_value(text) for text in column)]
        else:
            values[name] = [str(column.dtype), *(None if pd.isna(value) else value for value in column)]
    return values


def _check_exports_match_reference(client: TestClient) -> None:
    session_factory: sessionmaker[Session] = client.app.state.session_factory  # type: ignore[attr-defined]
    experiment_id = _fill(client, session_factory)
    postgres = _is_postgres(client)
    for table, filters in FILTERS:
        csv_text = _export(session_factory, experiment_id, table, filters, "csv").decode()
        expected = _reference_csv(session_factory, experiment_id, table, filters)
        if postgres:
            # PostgreSQL's own CSV: its layout, the reference's values.
            assert _exact_values(csv_text) == _exact_values(expected), (table, filters)
        else:
            assert csv_text == expected, (table, filters)
        assert csv_text.count("\n") > 1
        content = _export(session_factory, experiment_id, table, filters, "parquet")
        assert pq.read_table(io.BytesIO(content)).to_pylist() == _reference_rows(
            session_factory, experiment_id, table, filters
        )
    # Awkward values reach the file in the database's layout; the label and JSON are quoted by the csv rules.
    text = _export(session_factory, experiment_id, "layer", MetricFilters(), "csv").decode()
    assert "1e-05" in text and "2.5e-07" in text and "12345678901.5" in text
    assert '"relu, ""plain"""' in text and '"odd, ""name"""' in text and '"[8,8]"' in text
    if postgres:
        assert ",-0.0," in text and ",Infinity," in text and ",1e+16," in text and ",null," not in text
        assert '"{""note"": ""a,b"", ""slope"": 1.0}"' in text
    else:
        assert "-0.0" in text and ",inf," in text and ",1e+16," in text
        assert '"{""note"": ""a,b"", ""slope"": 1.0}"' in text


def test_csv_and_parquet_equal_the_reference_encoders_on_sqlite(client: TestClient) -> None:
    _check_exports_match_reference(client)


@pytest.fixture
def postgres_client(tmp_path: Path) -> Iterator[TestClient]:
    with postgres_client_of("actlab_export", tmp_path) as client:
        yield client


def test_csv_and_parquet_equal_the_reference_encoders_on_postgres(postgres_client: TestClient) -> None:
    _check_exports_match_reference(postgres_client)


def test_the_csv_of_sqlite_and_of_postgresql_read_back_to_the_same_values(
    client: TestClient, postgres_client: TestClient
) -> None:
    # The same rows in both databases (the same seeded values); only the runs' ids differ.
    tables = {}
    for database, test_client in (("sqlite", client), ("postgresql", postgres_client)):
        session_factory = test_client.app.state.session_factory  # type: ignore[attr-defined]
        experiment_id = _fill(test_client, session_factory)
        for table, filters in FILTERS:
            values = _exact_values(_export(session_factory, experiment_id, table, filters, "csv").decode())
            ids = values.pop("run_id")
            assert len(ids) > 1
            # SQLite itself keeps no -0.0 (its records store a whole real as an integer): the one stored difference.
            tables[database, table, filters] = {
                name: [value if value != (-0.0).hex() else (0.0).hex() for value in column]
                for name, column in values.items()
            }
    for table, filters in FILTERS:
        assert tables["sqlite", table, filters] == tables["postgresql", table, filters], (table, filters)
    # The awkward floats are all there, bit for bit (pandas reads the layouts of both, inf and Infinity alike).
    losses = set(tables["postgresql", "epoch", MetricFilters()]["train_loss"][1:])
    assert {value.hex() for value in AWKWARD_FLOATS} - {(-0.0).hex()} <= losses


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_batch_settings_take_effect_and_a_batch_of_one_row_still_exports_the_whole_table(
    database: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_client: TestClient = request.getfixturevalue("client" if database == "sqlite" else "postgres_client")
    session_factory = test_client.app.state.session_factory  # type: ignore[attr-defined]
    experiment_id = _fill(test_client, session_factory)
    settings = test_client.app.state.settings  # type: ignore[attr-defined]
    monkeypatch.setattr(settings, "export_batch_rows", 1)
    monkeypatch.setattr(settings, "parquet_row_group_rows", 3)
    # Rows in each piece read from the database: driver batches (SQLite, Parquet) or COPY blocks (CSV on PostgreSQL).
    pieces: list[int] = []
    real_batches, real_blocks = repository.driver_row_batches, repository.copied_csv_blocks

    def batches(**options: Any) -> Iterator[tuple[int, Any]]:
        for position, rows in real_batches(**options):
            pieces.append(rows.num_rows)
            yield position, rows

    def blocks(**options: Any) -> Iterator[bytes]:
        for block in real_blocks(**options):
            pieces.append(block.count(b"\n"))
            yield block

    monkeypatch.setattr(repository, "driver_row_batches", batches)
    monkeypatch.setattr(repository, "copied_csv_blocks", blocks)
    for path, table in (("metrics", "epoch"), ("layer-metrics", "layer")):
        csv_text = test_client.get(f"/v1/experiments/{experiment_id}/{path}", params={"format": "csv"}).text
        expected = _reference_csv(session_factory, experiment_id, table, MetricFilters())
        assert _exact_values(csv_text) == _exact_values(expected)
        if database == "sqlite":
            assert csv_text == expected
        content = test_client.get(f"/v1/experiments/{experiment_id}/{path}", params={"format": "parquet"}).content
        parquet_file = pq.ParquetFile(io.BytesIO(content))
        rows = parquet_file.metadata.num_rows
        groups = [parquet_file.metadata.row_group(index).num_rows for index in range(parquet_file.num_row_groups)]
        assert rows == len(expected.splitlines()) - 1 > 3
        assert groups == [3] * (rows // 3) + ([rows % 3] if rows % 3 else [])
        assert parquet_file.read().to_pylist() == _reference_rows(
            session_factory, experiment_id, table, MetricFilters()
        )
    assert pieces and set(pieces) == {1}


def test_an_experiment_without_metrics_exports_the_header_and_an_empty_parquet(client: TestClient) -> None:
    _check_empty_exports(client)


def test_runs_without_rows_export_the_header_and_an_empty_parquet_on_postgres(postgres_client: TestClient) -> None:
    # Each run's COPY is then empty, which Arrow's CSV reader refuses ("Empty CSV file"): a 200 cut off mid-body.
    _check_empty_exports(postgres_client)


def _check_empty_exports(client: TestClient) -> None:
    experiment_id = uuid.UUID(client.post("/v1/experiments", json=_spec()).json()["id"])
    session_factory = client.app.state.session_factory  # type: ignore[attr-defined]
    csv_text = _export(session_factory, experiment_id, "epoch", MetricFilters(), "csv").decode()
    assert csv_text == _reference_csv(session_factory, experiment_id, "epoch", MetricFilters())
    assert csv_text.splitlines() == [",".join(repository.EPOCH_METRIC_COLUMNS) + ",model.hidden,training.lr"]
    table = pq.read_table(io.BytesIO(_export(session_factory, experiment_id, "layer", MetricFilters(), "parquet")))
    assert table.num_rows == 0
    assert table.schema.field("grad_norm").type == pa.float64()


def test_float_text_is_repr_for_every_kind_of_double() -> None:
    generator = random.Random(3)
    values: list[float] = [struct.unpack("d", struct.pack("Q", generator.getrandbits(64)))[0] for _ in range(20_000)]
    for exponent in range(-324, 309):
        try:
            power = float(f"1e{exponent}")
        except OverflowError:
            continue
        values += [math.nextafter(power, 0.0), power, math.nextafter(power, math.inf), -power, 1.5 * power]
    values += [0.0, -0.0, math.nan, math.inf, -math.inf, 2.0**53, 9999999999999998.0, 0.001, 3e-4]
    written = export.float_text(pa.array([*values, None], pa.float64())).to_pylist()
    assert written[:-1] == [repr(value) for value in values]
    assert written[-1] is None


def test_the_export_reads_a_batch_only_after_the_one_before_was_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = uuid.UUID(client.post("/v1/experiments", json=small_spec()).json()["id"])
    session_factory = client.app.state.session_factory  # type: ignore[attr-defined]
    with session_factory() as session:
        run_ids = list(session.scalars(select(Run.id).where(Run.experiment_id == experiment_id)))
        session.execute(
            insert(EpochMetric),
            [{"run_id": run_id, "epoch": epoch, "attempt": 1} for run_id in run_ids for epoch in range(1, 2501)],
        )
        session.commit()
    fetched = 0
    real_batches = repository.driver_row_batches

    def counting(**options: Any) -> Iterator[tuple[int, Any]]:
        nonlocal fetched
        for position, rows in real_batches(**options):
            fetched += len(rows)
            yield position, rows

    monkeypatch.setattr(repository, "driver_row_batches", counting)
    for output_format in ("csv", "parquet"):
        fetched = 0
        chunks = stream_metric_table(
            session_factory=session_factory,
            experiment_id=experiment_id,
            filters=MetricFilters(),
            table="epoch",
            output_format=output_format,  # type: ignore[arg-type]
            batch_rows=1000,
            rows_per_group=2000,
        )
        # Rows read from the database but not yet in a chunk handed out, after each chunk.
        unsent, sent, groups = [], 0, 0
        for chunk in chunks:
            if output_format == "csv":
                sent += chunk.count(b"\n")
                unsent.append(fetched - (sent - 1))  # the first line is the header
            else:
                groups += 1
                unsent.append(fetched - 2000 * groups)
        chunks.close()
        assert fetched == 10_000
        if output_format == "csv":
            assert sent == 10_001
            # Only the first batch, read before the response starts, is ever ahead of what was sent.
            assert max(unsent) <= 1000
        else:
            assert groups == 5 + 1  # five row groups of 2,000 rows, then the footer
            # At most a row group and the batch that completes it are held.
            assert max(unsent) <= 2000 + 1000


def test_parquet_writes_one_row_group_per_rows_per_group() -> None:
    schema = pa.schema([pa.field("x", pa.int64())])
    batches = [pa.record_batch([pa.array(range(start, start + 4), pa.int64())], schema=schema) for start in (0, 4, 8)]
    chunks = list(parquet.parquet_chunks(schema, batches, rows_per_group=5))
    # 12 rows in groups of 5: three row groups, each sent as written, then the footer.
    assert len(chunks) == 4
    assert all(chunks)
    table = pq.ParquetFile(io.BytesIO(b"".join(chunks)))
    assert table.metadata.num_row_groups == 3
    assert [table.metadata.row_group(index).num_rows for index in range(3)] == [5, 5, 2]
    assert table.read().column("x").to_pylist() == list(range(12))
