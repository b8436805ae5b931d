"""`actlab list`, `actlab status` without an id and `actlab open` against the real app served by uvicorn."""

from __future__ import annotations

import argparse
import uuid
import webbrowser
from typing import Any

import httpx
import pytest

from actlab import Client, Experiment
from app.cli import build_parser, connection
from app.cli.experiments import list_experiments, open_report, status
from tests.cli.conftest import Served

SPEC = {
    "dataset": {"name": "spirals", "params": {"samples": 200}},
    "model": {"kind": "mlp", "hidden": [4]},
    "activations": ["relu", "tanh"],
    "seeds": [0],
    "training": {"epochs": 3},
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def no_stored_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's own credentials file out of these tests."""
    monkeypatch.delenv("ACTLAB_API_KEY", raising=False)
    monkeypatch.delenv("ACTLAB_URL", raising=False)
    monkeypatch.setattr(connection, "stored_key", lambda url: None)


def _arguments(served: Served, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([*argv, "--url", served.url, "--api-key", served.key])


def _submit(served: Served, *names: str) -> list[Experiment]:
    """Submit one experiment per name, in order (no worker: they stay queued)."""
    with Client(served.url, api_key=served.key) as client:
        return [client.submit({**SPEC, "name": name}) for name in names]


def _rows(output: str) -> list[list[str]]:
    """The list table's rows below the header, split on runs of two or more spaces."""
    lines = output.splitlines()
    assert lines[0].split() == ["id", "name", "status", "progress", "created", "(UTC)"]
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:]]


def test_list_shows_the_newest_first_with_status_and_name_filters_and_a_limit(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second, third = _submit(served, f"order {tag} a", f"order {tag} b", f"Order {tag} c")
    with Client(served.url, api_key=served.key) as client:
        client.experiment(second.id).cancel()

    assert list_experiments(_arguments(served, "list", "--name", f"ORDER {tag}")) == 0
    rows = _rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == [third.id, second.id, first.id]
    assert [row[1:4] for row in rows] == [
        [f"Order {tag} c", "queued", "0/6"],
        [f"order {tag} b", "cancelled", "0/6"],
        [f"order {tag} a", "queued", "0/6"],
    ]
    assert all(row[4].startswith("20") for row in rows)

    assert list_experiments(_arguments(served, "list", "--name", tag, "--status", "cancelled")) == 0
    assert [row[0] for row in _rows(capsys.readouterr().out)] == [second.id]
    arguments = _arguments(served, "list", "--name", tag, "--status", "cancelled", "--status", "queued", "--limit", "2")
    assert list_experiments(arguments) == 0
    captured = capsys.readouterr()
    assert [row[0] for row in _rows(captured.out)] == [third.id, second.id]
    assert "--limit N shows more" in captured.err

    assert list_experiments(_arguments(served, "list", "--name", f"nothing {tag}")) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no experiments match" in captured.err

    assert list_experiments(_arguments(served, "list", "--name", tag, "--dataset", "spirals")) == 0
    assert [row[0] for row in _rows(capsys.readouterr().out)] == [third.id, second.id, first.id]
    assert list_experiments(_arguments(served, "list", "--name", tag, "--dataset", "digits")) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no experiments match" in captured.err


def test_list_names_the_allowed_statuses_of_a_bad_one_and_refuses_a_limit_below_one(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list_experiments(_arguments(served, "list", "--status", "finished")) == 2
    error = capsys.readouterr().err
    assert "query.status.0: Input should be 'queued', 'running', 'succeeded', 'failed', 'cancelled' or" in error
    assert list_experiments(_arguments(served, "list", "--dataset", "imagenet")) == 2
    assert "query.dataset: dataset must be one of digits, mnist1d" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _arguments(served, "list", "--limit", "0")
    assert "must be at least 1" in capsys.readouterr().err


def test_status_without_an_id_shows_the_newest_experiment(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    tag = uuid.uuid4().hex[:8]
    _older, newest = _submit(served, f"older {tag}", f"newest {tag}")
    assert status(_arguments(served, "status")) == 0
    output = capsys.readouterr().out
    assert output.startswith(f"experiment {newest.id}  newest {tag}\n")
    assert "status: queued   epochs: 0/6" in output and "relu" in output and "tanh" in output


def test_open_prints_the_report_url_and_opens_it_only_with_browser(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    (experiment,) = _submit(served, f"open {uuid.uuid4().hex[:8]}")
    report = f"{served.url}/experiments/{experiment.id}"

    assert open_report(_arguments(served, "open", experiment.id)) == 0
    assert capsys.readouterr().out == f"{report}\n"
    assert opened == []
    assert open_report(_arguments(served, "open", "--browser")) == 0  # no id: the newest, this one
    assert capsys.readouterr().out == f"{report}\n"
    assert opened == [report]
    # The address serves the report.
    with Client(served.url, api_key=served.key) as client:
        page = client.http.request("GET", f"/experiments/{experiment.id}")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]

    missing = str(uuid.uuid4())
    assert open_report(_arguments(served, "open", missing)) == 2
    assert f"actlab open: HTTP 404: experiment {missing} not found" in capsys.readouterr().err


def test_status_and_open_without_an_id_say_so_when_there_is_no_experiment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/experiments"
        return httpx.Response(200, json={"items": [], "total": 0, "limit": 1, "offset": 0, "next_offset": None})

    arguments = build_parser().parse_args(["status", "--url", "http://service.example"])
    assert status(arguments, transport=httpx.MockTransport(handler)) == 1
    assert "there are no experiments yet: actlab submit SPEC.json" in capsys.readouterr().err
    arguments = build_parser().parse_args(["open", "--url", "http://service.example"])
    assert open_report(arguments, transport=httpx.MockTransport(handler)) == 1
    assert "actlab open: there are no experiments yet" in capsys.readouterr().err
