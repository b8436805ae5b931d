"""Schemathesis against the OpenAPI schema: no 5xx, responses match the schema, invalid data is rejected.

One app on one SQLite file for the whole module, with a recording dispatcher and a real admin
key; every operation of the published schema gets positive and negative examples (about a
thousand requests, derandomized so a failure reproduces), half of them aimed at a stored,
finished experiment with metrics so that the routes do real work instead of answering 404.
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from sqlalchemy import select

from app.auth.service import hash_key
from app.config import Settings
from app.dependencies import get_dispatcher
from app.experiments.service import refresh_experiment_status
from app.main import create_app
from app.models import ApiKey, EpochMetric, LayerMetric, Run, RunStatus
from tests.api.conftest import RecordingDispatcher, bearer, small_spec

# A development dependency (pyproject's dev extra); without it this module is reported as skipped.
schemathesis = pytest.importorskip("schemathesis")
SchemathesisConfig = pytest.importorskip("schemathesis.config").SchemathesisConfig

EXAMPLES_PER_OPERATION = 30
FUZZ_KEY = "al_fuzz-test-admin-key-0123456789abcdefghijklmnop"
STORED: dict[str, str] = {}
_CASES = itertools.count()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Iterator[FastAPI]:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copyfile(migrated_template, folder / "fuzz.db")
    app = create_app(
        Settings(
            DATABASE_URL=f"sqlite:///{folder / 'fuzz.db'}",
            BROKER_URL="filesystem://",
            broker_folder=folder / "broker",
            credentials_file=folder / "credentials.json",
            auth_required=True,
            # Generated specs are many and fast: the rate cap would answer most of them 429.
            max_submissions_per_minute=0,
            max_active_arms_per_owner=0,
        )
    )
    app.dependency_overrides[get_dispatcher] = RecordingDispatcher
    yield app


class _AppUnderTest:
    """The ASGI app schemathesis calls: the module's app, set once the fixture has built it."""

    app: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.app is not None, "the fuzz_key fixture sets the app first"
        await self.app(scope, receive, send)


APP_UNDER_TEST = _AppUnderTest()


def _store_finished_experiment(app: FastAPI) -> None:
    """Submit an experiment, give each run three epochs of metrics and finish it, so every route has data."""
    with TestClient(app, headers=bearer(FUZZ_KEY)) as client:
        response = client.post("/v1/experiments", json=small_spec())
    assert response.status_code == 202
    experiment_id = uuid.UUID(response.json()["id"])
    with app.state.session_factory() as session:
        runs = session.scalars(select(Run).where(Run.experiment_id == experiment_id)).all()
        for index, run in enumerate(runs):
            for epoch in (1, 2, 3):
                accuracy = 0.5 + 0.1 * epoch + 0.01 * index
                session.add(
                    EpochMetric(
                        run_id=run.id,
                        epoch=epoch,
                        train_loss=1.0 / epoch,
                        train_accuracy=accuracy,
                        test_loss=1.1 / epoch,
                        test_accuracy=accuracy - 0.02,
                        epoch_seconds=0.1,
                    )
                )
                session.add(
                    LayerMetric(run_id=run.id, epoch=epoch, layer=0, layer_name="hidden.0", grad_norm=0.1 * epoch)
                )
            run.status = RunStatus.succeeded
            run.epochs_completed = 3
        session.flush()
        refresh_experiment_status(session=session, experiment_id=experiment_id)
        session.commit()
        STORED["experiment_id"] = str(experiment_id)
        STORED["run_id"] = str(runs[0].id)


@pytest.fixture(scope="module")
def fuzz_key(fuzz_app: FastAPI) -> Iterator[str]:
    """The admin key schemathesis sends (a fixed one: its configuration is read at import) and a stored experiment."""
    with fuzz_app.state.session_factory() as session:
        session.add(ApiKey(name="fuzzer", key_hash=hash_key(FUZZ_KEY), prefix=FUZZ_KEY[:11], is_admin=True))
        session.commit()
    _store_finished_experiment(fuzz_app)
    APP_UNDER_TEST.app = fuzz_app
    yield FUZZ_KEY
    APP_UNDER_TEST.app = None


def _aim_at_stored_data(case: Any) -> None:
    """Every other generated id becomes the stored experiment's (or run's): random ids would only ever find 404."""
    parameters = case.path_parameters or {}
    for name in ("experiment_id", "run_id"):
        if name in parameters and next(_CASES) % 2 == 0:
            try:
                uuid.UUID(str(parameters[name]))
            except ValueError:
                continue  # an invalid id stays invalid: it is there to be rejected
            parameters[name] = STORED[name]


def _excluded_checks(case: Any) -> list[Any]:
    """Checks that do not apply to an operation, each for a stated reason."""
    excluded = [
        # Valid by the JSON schema is not always valid: a spec must also name known activations and stay within
        # cost limits, and page sizes are bounded by a setting; these are 422s by design.
        schemathesis.checks.positive_data_acceptance,
    ]
    if case.path == "/v1/experiments/import":
        # Other methods on this path match /v1/experiments/{experiment_id} ("import" is not an id: 422) and
        # its Allow header names GET: the two routes share a path shape.
        excluded += [schemathesis.checks.unsupported_method, schemathesis.checks.allow_header_conformance]
    return excluded


def _published_schema() -> dict[str, Any]:
    """The OpenAPI document, from an app that is built but never started (no database is touched)."""
    app = create_app(Settings(DATABASE_URL="sqlite:///:memory:", BROKER_URL="memory://"))
    return app.openapi()


# Through schemathesis' own auth settings, so its negative cases without the header stay without it.
schema = schemathesis.openapi.from_dict(
    _published_schema(),
    config=SchemathesisConfig.from_dict({"auth": {"openapi": {"APIKey": {"bearer": FUZZ_KEY}}}}),
)
schema.app = APP_UNDER_TEST


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_matches_its_schema(case: Any, fuzz_key: str) -> None:
    _aim_at_stored_data(case)
    case.call_and_validate(excluded_checks=_excluded_checks(case))
