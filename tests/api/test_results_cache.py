"""The results cache over HTTP: a finished experiment's results are computed once per (experiment, options),
served as the same bytes, and recomputed after new seeds, a retry or an import changes them."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.archives import service as archives_service
from app.config import Settings
from app.models import Experiment, ResultCacheEntry, Run, RunStatus
from app.results import cache, router
from app.results import service as results_service
from app.results.encoding import encode_table
from tests.api.conftest import small_spec
from tests.api.test_retry import _runs, _train

# Several views, formats and options: each is its own entry and each must be invalidated.
QUERIES = (
    "",
    "?view=pairs",
    "?view=runs&format=csv",
    "?summary=best&format=parquet",
    "?metric=test_loss&resamples=500",
)


def _finished_grid(client: TestClient, db: Session, **overrides: Any) -> tuple[str, dict[tuple[str, int], Run]]:
    """A 2 x 2 grid whose runs all succeeded after 3 epochs."""
    experiment_id: str = client.post("/v1/experiments", json=small_spec(**overrides)).json()["id"]
    for run in _runs(db, experiment_id).values():
        _train(db, run.id, range(1, 4), end=RunStatus.succeeded)
    return experiment_id, _runs(db, experiment_id)


def _results(client: TestClient, experiment_id: str, query: str = "") -> bytes:
    response = client.get(f"/v1/experiments/{experiment_id}/results{query}")
    assert response.status_code == 200, response.text
    return response.content


def _entries(db: Session, experiment_id: str) -> int:
    db.commit()
    return int(
        db.scalar(
            select(func.count())
            .select_from(ResultCacheEntry)
            .where(ResultCacheEntry.experiment_id == uuid.UUID(experiment_id))
        )
        or 0
    )


def _seeds_per_activation(client: TestClient, experiment_id: str) -> dict[str, int]:
    rows = json.loads(_results(client, experiment_id))
    return {row["activation"]: row["n"] for row in rows}


def test_a_finished_experiment_answers_the_same_bytes_from_one_entry_per_normalised_options(
    client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id, _ = _finished_grid(client, db)
    first = {query: _results(client, experiment_id, query) for query in QUERIES}
    assert _entries(db, experiment_id) == len(QUERIES)

    def refuse(**_: Any) -> pd.DataFrame:
        raise AssertionError("the results were computed again")

    for view in router._RESULT_VIEWS:
        monkeypatch.setitem(router._RESULT_VIEWS, view, refuse)
    for query, content in first.items():
        assert _results(client, experiment_id, query) == content
    # The defaults written out are the same options: the same entry, the same bytes.
    assert _results(client, experiment_id, "?alpha=0.05&summary=final&format=json") == first[""]
    assert _entries(db, experiment_id) == len(QUERIES)


def test_the_cached_bytes_are_those_of_a_fresh_computation(client: TestClient, db: Session) -> None:
    experiment_id, _ = _finished_grid(client, db)
    _results(client, experiment_id, "?view=pairs&format=csv")
    cached = _results(client, experiment_id, "?view=pairs&format=csv")
    options = results_service.result_options(default_equivalence_margin=0.01)
    tables = results_service.load_tables(session=db, experiment_id=uuid.UUID(experiment_id))
    assert cached == encode_table(results_service.pairs_table(tables=tables, options=options), "csv")


def test_an_unfinished_experiment_is_computed_on_every_request(client: TestClient, db: Session) -> None:
    experiment_id: str = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    _train(db, runs["relu", 0].id, range(1, 3), end=None)
    before = _seeds_per_activation(client, experiment_id)
    _train(db, runs["tanh", 0].id, range(1, 4), end=RunStatus.succeeded)
    assert _entries(db, experiment_id) == 0
    assert before["tanh"] == 0
    assert _seeds_per_activation(client, experiment_id)["tanh"] == 1


def test_new_seeds_invalidate_every_cached_view(client: TestClient, db: Session) -> None:
    experiment_id, _ = _finished_grid(client, db)
    before = {query: _results(client, experiment_id, query) for query in QUERIES}
    assert _seeds_per_activation(client, experiment_id) == {"relu": 2, "tanh": 2}

    response = client.post(f"/v1/experiments/{experiment_id}/seeds", json={"seeds": [2]})
    assert response.status_code == 202, response.text
    # Queued again: the new runs count as unfinished at once.
    assert _results(client, experiment_id) != before[""]
    for run in response.json()["runs"]:
        _train(db, uuid.UUID(run["id"]), range(1, 4), end=RunStatus.succeeded)

    assert _seeds_per_activation(client, experiment_id) == {"relu": 3, "tanh": 3}
    for query, content in before.items():
        assert _results(client, experiment_id, query) != content, query


def test_a_retry_invalidates_every_cached_view(client: TestClient, db: Session) -> None:
    experiment_id: str = client.post("/v1/experiments", json=small_spec()).json()["id"]
    runs = _runs(db, experiment_id)
    for key, run in runs.items():
        _train(db, run.id, range(1, 4), end=RunStatus.failed if key == ("relu", 1) else RunStatus.succeeded)
    before = {query: _results(client, experiment_id, query) for query in QUERIES}
    assert _seeds_per_activation(client, experiment_id) == {"relu": 1, "tanh": 2}

    response = client.post(f"/v1/experiments/{experiment_id}/retry")
    assert response.status_code == 202, response.text
    _train(db, runs["relu", 1].id, range(1, 4), end=RunStatus.succeeded)

    assert _seeds_per_activation(client, experiment_id) == {"relu": 2, "tanh": 2}
    for query, content in before.items():
        assert _results(client, experiment_id, query) != content, query


def test_results_read_while_an_import_writes_its_rows_are_not_served_after_it(
    app: FastAPI, client: TestClient, db: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id, _ = _finished_grid(client, db)
    archive = client.get(f"/v1/experiments/{experiment_id}/export").content
    full = {query: _results(client, experiment_id, query) for query in QUERIES}
    # One metric row per transaction, and a reader between the first two: it sees a finished experiment
    # (statuses are imported first) with one epoch row, and its answers go to the cache.
    monkeypatch.setattr(settings, "import_batch_rows", 1)
    insert_rows = archives_service.repository.insert_metric_rows
    calls: list[int] = []

    def read_and_insert(**arguments: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first row is committed, the second not yet written
            imported = db.scalars(select(Experiment.id).where(Experiment.id != uuid.UUID(experiment_id))).one()
            with app.state.session_factory() as reader:
                for query in QUERIES:
                    _cache_like_a_request(reader, imported, query)
            assert _entries(db, str(imported)) == len(QUERIES)
        insert_rows(**arguments)

    monkeypatch.setattr(archives_service.repository, "insert_metric_rows", read_and_insert)
    response = client.post("/v1/experiments/import", content=archive, headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    imported_id = response.json()["id"]

    assert _seeds_per_activation(client, imported_id) == {"relu": 2, "tanh": 2}
    for query, content in full.items():
        assert _without_trace(_results(client, imported_id, query), query) == _without_trace(content, query), query


def _cache_like_a_request(session: Session, experiment_id: uuid.UUID, query: str) -> None:
    """What GET .../results{query} does with the cache, from another session."""
    parameters = dict(part.split("=") for part in query.lstrip("?").split("&") if part)
    view = parameters.pop("view", "summary")
    output_format = parameters.pop("format", "json")
    given: dict[str, Any] = {key: int(value) if key == "resamples" else value for key, value in parameters.items()}
    options = results_service.result_options(default_equivalence_margin=0.01, **given)

    def compute() -> bytes:
        tables = results_service.load_tables(session=session, experiment_id=experiment_id)
        return encode_table(router._RESULT_VIEWS[view](tables=tables, options=options), output_format)

    router_parameters = {"format": output_format, **router.asdict(options)}
    cache.cached_response(
        session=session,
        experiment_id=experiment_id,
        endpoint=f"results/{view}",
        parameters=router_parameters,
        compute=compute,
        max_bytes=1 << 20,
    )


def _without_trace(content: bytes, query: str) -> list[dict[str, Any]]:
    """The rows without the columns that name the experiment or its runs (an import gives new ids)."""
    if "format=csv" in query:
        frame = pd.read_csv(io.BytesIO(content))
    elif "format=parquet" in query:
        frame = pd.read_parquet(io.BytesIO(content))
    else:
        frame = pd.DataFrame(json.loads(content))
    dropped = [column for column in frame.columns if column.startswith("experiment_") or column.endswith("run_ids")]
    dropped += [column for column in ("run_id",) if column in frame.columns]
    return frame.drop(columns=dropped).astype(str).to_dict("records")
