"""The `actlab submit` / `actlab status` client against a fake service, and the worker CLI's arguments."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import build_parser
from app.cli import client as client_module
from app.cli.client import format_results_table, status, submit, summarise_final_accuracy
from app.cli.service import parse_queues

EXPERIMENT_ID = str(uuid.uuid4())


@pytest.fixture(autouse=True)
def no_stored_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's own credentials file out of these tests."""
    monkeypatch.delenv("ACTLAB_API_KEY", raising=False)
    monkeypatch.delenv("ACTLAB_URL", raising=False)
    monkeypatch.setattr(client_module, "_stored_key", lambda url: None)


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


def test_submit_wait_follows_progress_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    states = iter([_experiment("running", 1), _experiment("running", 3), _experiment("succeeded", 4)])
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, dict(request.headers)))
        if request.method == "POST":
            assert json.loads(request.content) == {"name": "demo"}
            return httpx.Response(202, json=_experiment("queued", 0))
        if request.url.path.endswith("/metrics"):
            return httpx.Response(200, json=_metric_rows())
        return httpx.Response(200, json=next(states))

    arguments = _arguments(
        "submit", str(_spec_file(tmp_path)), "--wait", "--poll", "0", "--idempotency-key", "k-1", "--url", "http://x"
    )
    code = submit(arguments, transport=httpx.MockTransport(handler))
    assert code == 0
    output = capsys.readouterr().out
    assert f"experiment {EXPERIMENT_ID} submitted" in output
    assert "85.00% ± 7.07" in output
    assert seen[0][2]["idempotency-key"] == "k-1"
    assert [path for _, path, _ in seen].count(f"/v1/experiments/{EXPERIMENT_ID}") == 3


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
    monkeypatch.setattr(client_module, "_stored_key", lambda url: "stored-key" if url == "http://x:1" else None)
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
