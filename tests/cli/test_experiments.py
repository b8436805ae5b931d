"""The `actlab submit` / `actlab status` client against a scripted fake service, and the worker CLI's arguments.

The end-to-end tests at the bottom run it against the real app served by uvicorn, with a stand-in worker
writing epoch rows into the SQLite database while the client follows the event stream.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from actlab.events import ServerSentEvent, ServerSentEventParser
from actlab.http import ServiceClient
from app.cli import build_parser, connection
from app.cli.experiments import (
    EXIT_TIMED_OUT,
    format_results_table,
    status,
    submit,
    summarise_final_accuracy,
)
from app.cli.progress import wait_for_experiment
from app.cli.service import parse_queues
from app.db import session_factory
from app.experiments.service import refresh_experiment_status
from app.models import EpochMetric, Experiment, Run
from tests.cli.conftest import Served
from tests.fixtures import REPOSITORY

EXPERIMENT_ID = str(uuid.uuid4())


@pytest.fixture(autouse=True)
def no_stored_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's own credentials file out of these tests."""
    monkeypatch.delenv("ACTLAB_API_KEY", raising=False)
    monkeypatch.delenv("ACTLAB_URL", raising=False)
    monkeypatch.setattr(connection, "stored_key", lambda url: None)


def _experiment(status_text: str, finished: int, total: int = 4) -> dict[str, Any]:
    return {
        "id": EXPERIMENT_ID,
        "name": "demo",
        "status": status_text,
        "queue": "cpu",
        "error": None,
        "progress": {"finished_epochs": finished, "total_epochs": total, "runs_total": 2, "runs_finished": 0},
        "runs": [
            {"id": str(uuid.uuid4()), "activation": "relu", "seed": 0, "status": "queued", "epochs_completed": 0},
            {"id": str(uuid.uuid4()), "activation": "tanh", "seed": 0, "status": "queued", "epochs_completed": 0},
        ],
    }


def _metric_rows() -> list[dict[str, Any]]:
    rows = []
    for activation, accuracies in (("relu", (0.9, 0.8)), ("tanh", (0.5, 0.7))):
        for seed, accuracy in enumerate(accuracies):
            run_id = f"{activation}-{seed}"
            rows.append({"run_id": run_id, "activation": activation, "seed": seed, "epoch": 1, "test_accuracy": 0.1})
            rows.append(
                {"run_id": run_id, "activation": activation, "seed": seed, "epoch": 2, "test_accuracy": accuracy}
            )
    return rows


def _arguments(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"name": "demo"}))
    return path


def test_final_accuracy_is_the_mean_and_std_of_each_runs_last_epoch() -> None:
    results = summarise_final_accuracy(_metric_rows())
    assert [(result.activation, result.runs) for result in results] == [("relu", 2), ("tanh", 2)]
    assert results[0].mean == pytest.approx(0.85) and results[0].std == pytest.approx(0.0707107, rel=1e-5)
    table = format_results_table(results)
    assert "relu" in table and "85.00% ± 7.07" in table and "60.00% ± 14.14" in table


def test_submit_prints_each_rejected_field_and_exits_with_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        detail = [{"loc": "training.lr", "msg": "Input should be greater than 0", "type": "greater_than"}]
        return httpx.Response(422, json={"detail": detail})

    code = submit(_arguments("submit", str(_spec_file(tmp_path))), transport=httpx.MockTransport(handler))
    assert code == 2
    assert "training.lr: Input should be greater than 0" in capsys.readouterr().err


def test_submit_wait_polls_a_service_without_events_and_prints_the_metrics_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    states = [_experiment("running", 1), _experiment("running", 3), _experiment("succeeded", 4)]
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, dict(request.headers)))
        if request.method == "POST":
            assert json.loads(request.content) == {"name": "demo"}
            return httpx.Response(202, json=_experiment("queued", 0))
        if request.url.path.endswith(("/events", "/results")):
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path.endswith("/metrics"):
            return httpx.Response(200, json=_metric_rows())
        polls = [path for _, path, _ in seen].count(f"/v1/experiments/{EXPERIMENT_ID}")
        return httpx.Response(200, json=states[min(polls, len(states)) - 1])

    arguments = _arguments(
        "submit", str(_spec_file(tmp_path)), "--wait", "--poll", "0", "--idempotency-key", "k-1", "--url", "http://x"
    )
    code = submit(arguments, transport=httpx.MockTransport(handler))
    assert code == 0
    captured = capsys.readouterr()
    assert f"experiment {EXPERIMENT_ID} submitted" in captured.out
    assert "85.00% ± 7.07" in captured.out
    assert "4/4" in captured.err
    assert seen[0][2]["idempotency-key"] == "k-1"
    # One look, two polls (the second one sees the end), and the final read.
    assert [path for _, path, _ in seen].count(f"/v1/experiments/{EXPERIMENT_ID}") == 4


def test_submit_of_a_missing_or_malformed_file_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert submit(_arguments("submit", str(broken))) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert submit(_arguments("submit", str(tmp_path / "absent.json"))) == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_unreachable_service_says_how_to_start_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    code = submit(_arguments("submit", str(_spec_file(tmp_path))), transport=httpx.MockTransport(handler))
    assert code == 1
    assert "actlab serve" in capsys.readouterr().err


def test_status_prints_the_runs_and_uses_the_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ACTLAB_URL", "http://service.example:9000")
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(f"{request.url.host}:{request.url.port}")
        return httpx.Response(200, json=_experiment("running", 2))

    assert status(_arguments("status", EXPERIMENT_ID), transport=httpx.MockTransport(handler)) == 0
    output = capsys.readouterr().out
    assert "status: running" in output and "epochs: 2/4" in output and "tanh" in output
    assert hosts == ["service.example:9000"]


def test_status_of_something_that_is_not_an_id_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert status(_arguments("status", "nope")) == 2
    assert "not an experiment id" in capsys.readouterr().err


def test_worker_queues_accept_cpu_gpu_and_both_and_name_the_allowed_ones() -> None:
    assert parse_queues("cpu") == ["cpu"]
    assert parse_queues("gpu, cpu") == ["gpu", "cpu"]
    with pytest.raises(argparse.ArgumentTypeError, match="allowed: cpu, gpu"):
        parse_queues("tpu")


def test_the_cli_offers_serve_worker_migrate_submit_and_status() -> None:
    parser = build_parser()
    for argv in (["serve", "--port", "8123"], ["worker", "--queues", "gpu"], ["migrate"], ["status", "x"]):
        assert callable(parser.parse_args(argv).handler)


def test_the_key_that_serve_stored_for_the_url_is_sent_unless_another_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(connection, "stored_key", lambda url: "stored-key" if url == "http://x:1" else None)
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("authorization"))
        return httpx.Response(200, json=_experiment("running", 2))

    transport = httpx.MockTransport(handler)
    assert status(_arguments("status", EXPERIMENT_ID, "--url", "http://x:1"), transport=transport) == 0
    assert (
        status(_arguments("status", EXPERIMENT_ID, "--url", "http://x:1", "--api-key", "k2"), transport=transport) == 0
    )
    assert sent == ["Bearer stored-key", "Bearer k2"]


def test_submit_rejects_a_timeout_that_is_not_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _arguments("submit", "spec.json", "--wait", "--timeout", "0")
    assert "--timeout: must be a positive number of seconds" in capsys.readouterr().err
    assert _arguments("submit", "spec.json", "--wait", "--timeout", "2.5").timeout == 2.5
    assert _arguments("submit", "spec.json", "--wait").timeout is None


def test_the_event_parser_follows_the_server_sent_events_rules() -> None:
    parser = ServerSentEventParser()
    lines = [
        "retry: 2500",
        "",
        ": heartbeat",
        "",
        "id: 7",
        "event: epoch",
        'data: {"a":',
        "data:1}",
        "",
        "data: plain",
        "unknown: ignored",
        "",
        "event: orphan",
        "",
    ]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert events == [
        ServerSentEvent(event="epoch", data='{"a":\n1}', last_event_id="7"),
        ServerSentEvent(event="message", data="plain", last_event_id="7"),
    ]
    assert events[0].payload() == {"a": 1} and events[1].payload() == {}
    assert parser.retry_milliseconds == 2500


# --- the event stream against a scripted service ------------------------------------------------------------


def _event(name: str, data: dict[str, Any], event_id: str | None = None) -> str:
    prefix = f"id: {event_id}\n" if event_id is not None else ""
    return f"{prefix}event: {name}\ndata: {json.dumps(data)}\n\n"


def _epoch(finished: int, activation: str = "relu") -> str:
    data = {"run_id": "r", "activation": activation, "seed": 0, "epoch": finished, "test_accuracy": 0.5}
    return _event("epoch", {**data, "epochs_finished": finished, "epochs_total": 4})


def _end(status_text: str = "succeeded") -> str:
    return _event("end", {"experiment_id": EXPERIMENT_ID, "status": status_text})


def _stream(*chunks: str, then: BaseException | None = None) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk.encode()
    if then is not None:
        raise then


class ScriptedService:
    """A fake service: the experiment's state, and one scripted response per events request."""

    def __init__(self, *streams: Callable[[httpx.Request], httpx.Response]) -> None:
        self.streams = list(streams)
        self.requests: list[httpx.Request] = []
        # Each status read takes the next state; the last one stays.
        self.states = [_experiment("running", 0)]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST":
            return httpx.Response(202, json=_experiment("queued", 0))
        if path.endswith("/events"):
            return self.streams.pop(0)(request) if self.streams else httpx.Response(503)
        if path.endswith("/results"):
            return httpx.Response(200, json=_summary_rows())
        return httpx.Response(200, json=self.states.pop(0) if len(self.states) > 1 else self.states[0])

    def paths(self) -> list[str]:
        return [request.url.path.removeprefix(f"/v1/experiments/{EXPERIMENT_ID}") for request in self.requests]


def _sse(*chunks: str, then: BaseException | None = None) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_stream(*chunks, then=then))

    return respond


def _summary_rows() -> list[dict[str, Any]]:
    common = {"metric": "test_accuracy", "summary": "final", "baseline": "relu", "diverged": 0, "std": 0.01}
    return [
        {**common, "activation": "relu", "activation_index": 0, "n": 2, "mean": 0.85, "rank": 1.0, "verdict": None}
        | {"ci_low": 0.84, "ci_high": 0.86, "p_holm": None},
        {**common, "activation": "tanh", "activation_index": 1, "n": 2, "mean": 0.6, "rank": 2.0, "verdict": "worse"}
        | {"ci_low": 0.59, "ci_high": 0.61, "p_holm": 0.01},
    ]


def _wait(service: ScriptedService, **options: Any) -> tuple[dict[str, Any], list[float], str]:
    sleeps: list[float] = []
    output = io.StringIO()
    with ServiceClient("http://x", transport=httpx.MockTransport(service.handler)) as client:
        experiment = wait_for_experiment(
            client, EXPERIMENT_ID, poll_seconds=0.0, output=output, sleep=sleeps.append, **options
        )
    return experiment, sleeps, output.getvalue()


def test_a_broken_stream_is_reopened_after_the_servers_retry_delay_with_the_last_event_id() -> None:
    service = ScriptedService(
        _sse(
            "retry: 2000\n\n",
            _epoch(1, "relu"),
            _event("ping", {}, event_id="e-1"),
            "event: epoch\ndata: {",
            then=httpx.ReadError("connection reset"),
        ),
        _sse(": heartbeat\n\n", _epoch(1), _epoch(2), _epoch(3), _epoch(4, "tanh"), _end()),
    )
    service.states = [_experiment("running", 0), _experiment("succeeded", 4)]
    experiment, sleeps, bar = _wait(service)
    events_requests = [request for request in service.requests if request.url.path.endswith("/events")]
    assert len(events_requests) == 2
    assert "last-event-id" not in events_requests[0].headers
    assert events_requests[1].headers["last-event-id"] == "e-1"
    assert events_requests[0].headers["accept"] == "text/event-stream"
    assert sleeps == [2.0]
    assert "4/4" in bar and "tanh seed 0 epoch 4" in bar
    # The stream, not polling, carried the progress: the status was read once before and once after.
    assert service.paths().count("") == 2
    assert experiment["status"] == "succeeded"


def test_a_stream_that_keeps_breaking_is_retried_a_bounded_number_of_times_then_polled() -> None:
    service = ScriptedService(*[_sse(then=httpx.ReadError("reset")) for _ in range(5)])
    service.states = [_experiment("running", 0), _experiment("running", 2), _experiment("succeeded", 4)]
    experiment, sleeps, bar = _wait(service, reconnect_attempts=2, reconnect_delay_seconds=0.5)
    assert service.paths() == ["", "/events", "/events", "/events", "", "", ""]
    # Backoff doubles between reconnects; then the --poll interval (0 here) between status reads.
    assert sleeps == [0.5, 1.0, 0.0, 0.0]
    assert experiment["status"] == "succeeded" and "4/4" in bar


def test_a_service_without_the_events_endpoint_is_polled_at_once() -> None:
    service = ScriptedService(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    service.states = [_experiment("running", 1), _experiment("running", 3), _experiment("succeeded", 4)]
    sleeps: list[float] = []
    output = io.StringIO()
    with ServiceClient("http://x", transport=httpx.MockTransport(service.handler)) as client:
        experiment = wait_for_experiment(client, EXPERIMENT_ID, poll_seconds=0.25, output=output, sleep=sleeps.append)
    assert service.paths() == ["", "/events", "", "", ""]
    assert sleeps == [0.25, 0.25]
    assert experiment["status"] == "succeeded" and "4/4" in output.getvalue()


def test_a_refused_key_on_the_stream_is_an_error_not_a_reason_to_poll(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = ScriptedService(lambda request: httpx.Response(401, json={"detail": "unknown API key"}))
    arguments = _arguments("submit", str(_spec_file(tmp_path)), "--wait", "--url", "http://x")
    assert submit(arguments, transport=httpx.MockTransport(service.handler)) == 1
    error = capsys.readouterr().err
    assert "HTTP 401 from the events stream: unknown API key" in error
    assert f"actlab status {EXPERIMENT_ID}" in error
    assert service.paths().count("") == 1


def test_submit_wait_prints_the_results_table_of_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = ScriptedService(
        _sse(_epoch(2), _event("status", {"scope": "experiment", "status": "partial"}), _end("partial"))
    )
    service.states = [_experiment("running", 0), _experiment("partial", 2)]
    arguments = _arguments("submit", str(_spec_file(tmp_path)), "--wait", "--url", "http://x")
    assert submit(arguments, transport=httpx.MockTransport(service.handler)) == 1
    output = capsys.readouterr().out
    assert f"experiment {EXPERIMENT_ID} partial" in output
    lines = output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("rank"))
    assert lines[header - 1] == "test_accuracy (final), baseline relu"
    assert lines[header + 2].split()[:3] == ["1", "relu", "2"]
    assert "worse" in lines[header + 3]
    assert f"actlab results {EXPERIMENT_ID}" in output


def test_submit_wait_says_so_when_no_run_succeeded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    service = ScriptedService(_sse(_end("failed")))
    failed = _experiment("failed", 0)
    failed["error"] = "2 failed; first error (relu, seed 0): out of memory"
    service.states = [_experiment("running", 0), failed]
    original = service.handler

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results"):
            return httpx.Response(200, json=[{**row, "n": 0, "mean": None, "rank": None} for row in _summary_rows()])
        return original(request)

    arguments = _arguments("submit", str(_spec_file(tmp_path)), "--wait", "--url", "http://x")
    assert submit(arguments, transport=httpx.MockTransport(handler)) == 1
    output = capsys.readouterr().out
    assert "error: 2 failed; first error (relu, seed 0): out of memory" in output
    assert "no run succeeded, so there is nothing to compare" in output
    assert "rank" not in output


def test_submit_wait_stops_at_the_timeout_and_names_the_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def heartbeats() -> Iterator[bytes]:
        # Bounded, so a client that ignored --timeout fails this test instead of hanging it.
        for _ in range(400):
            time.sleep(0.01)
            yield b": heartbeat\n\n"
        yield _end().encode()

    service = ScriptedService(
        lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, content=heartbeats())
    )
    arguments = _arguments("submit", str(_spec_file(tmp_path)), "--wait", "--url", "http://x", "--timeout", "0.3")
    assert submit(arguments, transport=httpx.MockTransport(service.handler)) == EXIT_TIMED_OUT
    error = capsys.readouterr().err
    assert f"stopped waiting after 0.3 s (--timeout); the experiment goes on: actlab status {EXPERIMENT_ID}" in error
    assert not any(path.endswith("/results") for path in service.paths())


# --- end to end: the real app under uvicorn, with a stand-in worker writing rows over time ---------------------

TINY_EXPERIMENT = {
    "dataset": {"name": "spirals", "params": {"samples": 200}},
    "model": {"kind": "mlp", "hidden": [4]},
    "activations": ["relu", "tanh"],
    "seeds": [0, 1],
    "training": {"epochs": 2},
    "device": "cpu",
}


def _wait_until(condition: Callable[[], Any], what: str, seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return value


def _experiment_named(served: Served, name: str) -> uuid.UUID | None:
    with session_factory(served.engine)() as session:
        return session.scalars(select(Experiment.id).where(Experiment.name == name)).first()


def _stand_in_worker(served: Served, name: str, problems: list[BaseException]) -> threading.Thread:
    """Once the client follows the stream, train every run by writing its epochs, a little apart in time."""

    def work() -> None:
        try:
            experiment_id = _wait_until(lambda: _experiment_named(served, name), "the submitted experiment")
            # The stream is open before any progress exists, so the bar can only have learnt it live.
            _wait_until(lambda: f"/v1/experiments/{experiment_id}/events" in served.log(), "the events request")
            with session_factory(served.engine)() as session:
                runs = session.scalars(
                    select(Run).where(Run.experiment_id == experiment_id).order_by(Run.activation_index, Run.seed)
                ).all()
                for run in runs:
                    run.status = "running"
                    run.started_at = datetime.now(UTC)
                    refresh_experiment_status(session=session, experiment_id=experiment_id)
                    session.commit()
                    for epoch in (1, 2):
                        accuracy = (
                            (0.9 if run.activation_label == "relu" else 0.6) - 0.1 * (2 - epoch) + 0.01 * run.seed
                        )
                        session.add(
                            EpochMetric(
                                run_id=run.id,
                                epoch=epoch,
                                attempt=1,
                                train_loss=1 - accuracy,
                                train_accuracy=accuracy,
                                test_loss=1 - accuracy,
                                test_accuracy=accuracy,
                                epoch_seconds=0.1,
                            )
                        )
                        run.epochs_completed = epoch
                        session.commit()
                        time.sleep(0.15)
                    run.status = "succeeded"
                    run.finished_at = datetime.now(UTC)
                    refresh_experiment_status(session=session, experiment_id=experiment_id)
                    session.commit()
        except BaseException as error:
            problems.append(error)

    thread = threading.Thread(target=work, name="stand-in-worker", daemon=True)
    thread.start()
    return thread


def test_submit_wait_follows_the_live_event_stream_of_the_real_service(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"live {uuid.uuid4().hex[:8]}"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({**TINY_EXPERIMENT, "name": name}))
    problems: list[BaseException] = []
    worker = _stand_in_worker(served, name, problems)
    arguments = _arguments("submit", str(spec_path), "--wait", "--url", served.url, "--api-key", served.key)
    assert submit(arguments) == 0
    worker.join(timeout=30)
    assert not problems
    captured = capsys.readouterr()
    experiment_id = _experiment_named(served, name)
    assert f"experiment {experiment_id} submitted: 4 run(s)" in captured.out
    assert f"report: {served.url}/experiments/{experiment_id}\n" in captured.out
    assert f"activations: {served.url}/v1/experiments/{experiment_id}/plots/activations.svg" in captured.out
    assert f"experiment {experiment_id} succeeded" in captured.out
    # The bar climbed epoch by epoch to the end, and showed runs finishing.
    for finished in range(1, 9):
        assert f"{finished}/8" in captured.err
    assert "succeeded, runs 4/4" in captured.err
    lines = captured.out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("rank")))
    assert lines[header - 1] == "test_accuracy (final), baseline relu"
    assert [line.split()[1] for line in lines[header + 2 : header + 4]] == ["relu", "tanh"]
    assert lines[header + 2].split()[3] == "0.905"
    # One stream carried the progress: the status was read once before it and once after, never polled.
    log = served.log()
    assert log.count(f"GET /v1/experiments/{experiment_id}/events") == 1
    assert log.count(f"GET /v1/experiments/{experiment_id} HTTP") == 2


def test_ctrl_c_stops_waiting_cleanly_and_names_the_experiment(served: Served, tmp_path: Path) -> None:
    name = f"interrupted {uuid.uuid4().hex[:8]}"
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({**TINY_EXPERIMENT, "name": name}))
    # As from a terminal: SIGINT raises KeyboardInterrupt. A test run started in the background (CI, `make
    # test &`) hands its children SIGINT ignored, and Python then leaves it ignored.
    command = [
        sys.executable,
        "-c",
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'actlab'; runpy.run_module('app.cli', run_name='__main__')",
        "submit",
        str(spec_path),
        "--wait",
        "--url",
        served.url,
    ]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("ACTLAB_")}
    environment["ACTLAB_API_KEY"] = served.key
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPOSITORY
    )
    try:
        experiment_id = _wait_until(lambda: _experiment_named(served, name), "the submitted experiment")
        _wait_until(lambda: f"/v1/experiments/{experiment_id}/events" in served.log(), "the events request")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)  # a hang guard, not a speed check
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    assert f"experiment {experiment_id} submitted" in stdout
    assert f"stopped waiting; the experiment goes on: actlab status {experiment_id}" in stderr
    assert "Traceback" not in stderr
    # Coming back later with the id works: the experiment is there, still waiting for a worker.
    arguments = _arguments("status", str(experiment_id), "--url", served.url, "--api-key", served.key)
    assert status(arguments) == 0
