"""Operations: Prometheus metrics at /metrics and structured JSON logs."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from app.config import Settings
from app.logging_config import JsonFormatter, TextFormatter, configure_logging, log_context
from app.main import create_app
from app.models import EpochMetric
from app.monitoring.service import redis_queue_depths
from tests.api.conftest import small_spec

REDIS_URL = "redis://127.0.0.1:6379/0"


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}; the endpoint needs no key."""
    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    missing = uuid.uuid4()
    for _ in range(3):
        assert client.get(f"/v1/experiments/{missing}").status_code == 404
    client.get("/no/such/page/at/all")
    client.post("/v1/experiments", content=b"{", headers={"Content-Type": "application/json"})
    samples = scrape(client)
    route = "/v1/experiments/{experiment_id}"
    assert value(samples, "actlab_http_requests_total", method="GET", route=route, status="404") == 3
    assert value(samples, "actlab_http_request_duration_seconds_count", method="GET", route=route) == 3
    assert value(samples, "actlab_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(samples, "actlab_http_requests_total", method="POST", route="/v1/experiments", status="422") == 1
    # Raw paths never become labels: the label set stays bounded whatever clients request.
    assert not any(str(missing) in str(labels) for _name, labels in samples)


def test_runs_and_experiments_by_status_and_the_embedded_queue_depth(
    client: TestClient, settings: Settings, db: Session
) -> None:
    from worker.celery_app import embedded_broker_folders

    client.post("/v1/experiments", json=small_spec())
    messages = embedded_broker_folders(settings.broker_folder)["messages"]
    messages.mkdir(parents=True, exist_ok=True)
    for index, queue in enumerate(("cpu", "cpu", "gpu")):
        (messages / f"{1000 + index}_{uuid.uuid4()}.{queue}.msg").write_text("{}")
    (messages / "notes.txt").write_text("not a message")

    samples = scrape(client)
    assert value(samples, "actlab_runs", status="queued") == 4
    assert value(samples, "actlab_runs", status="running") == 0
    assert value(samples, "actlab_experiments", status="queued") == 1
    assert value(samples, "actlab_queue_depth", queue="cpu") == 2
    assert value(samples, "actlab_queue_depth", queue="gpu") == 1
    assert value(samples, "actlab_scrape_source_up", source="database") == 1
    assert value(samples, "actlab_scrape_source_up", source="broker") == 1


def test_epoch_durations_come_from_the_epochs_workers_store(client: TestClient, db: Session) -> None:
    experiment = client.post("/v1/experiments", json=small_spec()).json()
    scrape(client)  # the histogram counts epochs stored from the first scrape on
    run_id = uuid.UUID(experiment["runs"][0]["id"])
    db.add_all(
        [EpochMetric(run_id=run_id, epoch=epoch, epoch_seconds=seconds) for epoch, seconds in ((1, 0.2), (2, 3.0))]
    )
    db.commit()

    samples = scrape(client)
    assert value(samples, "actlab_epoch_duration_seconds_count", queue="cpu") == 2
    assert value(samples, "actlab_epoch_duration_seconds_sum", queue="cpu") == pytest.approx(3.2)
    assert value(samples, "actlab_epoch_duration_seconds_bucket", queue="cpu", le="0.25") == 1
    # Already counted rows are not counted again.
    assert value(scrape(client), "actlab_epoch_duration_seconds_count", queue="cpu") == 2


def test_each_app_has_its_own_registry(settings: Settings, client: TestClient) -> None:
    client.get("/v1/experiments")
    with TestClient(create_app(settings)) as other:
        samples = scrape(other)
    assert value(samples, "actlab_http_requests_total", method="GET", route="/v1/experiments", status="200") is None


def test_an_unreachable_database_is_reported_not_a_failed_scrape(settings: Settings, tmp_path: Any) -> None:
    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/missing/dir/db.sqlite"})
    with TestClient(create_app(broken)) as client:
        samples = scrape(client)
    assert value(samples, "actlab_scrape_source_up", source="database") == 0
    assert value(samples, "actlab_runs", status="queued") is None


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as error:  # pragma: no cover - depends on the machine
        pytest.skip(f"Redis at 127.0.0.1:6379 is not available: {error}")
    yield client
    client.close()


def test_redis_queue_depth_reads_the_prefixed_lists_of_every_priority(
    redis_client: redis.Redis, settings: Settings
) -> None:
    prefix = f"actlab-test-{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}cpu", f"{prefix}gpu", f"{prefix}gpu\x06\x163"]
    try:
        redis_client.rpush(keys[0], "a", "b", "c")
        redis_client.rpush(keys[1], "a")
        redis_client.rpush(keys[2], "b")
        redis_client.rpush("cpu-not-ours", "x")
        assert redis_queue_depths(redis_client, key_prefix=prefix) == {"cpu": 3, "gpu": 2}
        app = create_app(settings.model_copy(update={"broker_url": REDIS_URL, "broker_key_prefix": prefix}))
        with TestClient(app) as client:
            samples = scrape(client)
        assert value(samples, "actlab_queue_depth", queue="cpu") == 3
    finally:
        redis_client.delete(*keys, "cpu-not-ours")


@pytest.fixture
def log_stream(settings: Settings) -> Iterator[io.StringIO]:
    """JSON logs of the root logger captured into a string, the previous configuration restored after."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging(settings.model_copy(update={"log_format": "json"}), stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_requests_are_logged_as_json_with_the_experiment_id(client: TestClient, log_stream: io.StringIO) -> None:
    experiment = client.post("/v1/experiments", json=small_spec()).json()
    client.get(f"/v1/experiments/{experiment['id']}")
    lines = _lines(log_stream)
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    submitted = [line for line in lines if line["message"].startswith("experiment submitted")]
    assert submitted and submitted[0]["experiment_id"] == experiment["id"]
    access = [line for line in lines if line["logger"] == "app.access" and line["method"] == "GET"]
    assert access[-1]["status"] == 200
    assert access[-1]["route"] == "/v1/experiments/{experiment_id}"
    assert access[-1]["experiment_id"] == experiment["id"]
    assert access[-1]["duration_ms"] >= 0
    assert access[-1]["api_key"].startswith("al_")


def test_log_context_puts_run_and_experiment_ids_on_every_line() -> None:
    record = logging.LogRecord("worker.runner", logging.INFO, __file__, 1, "epoch %d done", (3,), None)
    with log_context(experiment_id="e-1", run_id=uuid.UUID(int=7), unused=None):
        entry = json.loads(JsonFormatter().format(record))
        text = TextFormatter().format(record)
    assert entry["message"] == "epoch 3 done"
    assert entry["experiment_id"] == "e-1" and entry["run_id"] == str(uuid.UUID(int=7))
    assert "unused" not in entry
    assert text.endswith(f"[experiment_id=e-1 run_id={uuid.UUID(int=7)}]")
    assert "run_id" not in json.loads(JsonFormatter().format(record))  # the context ends with the block


def test_exceptions_are_one_json_line_with_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]
