"""``actlab results ID`` against the real app (requests forwarded in process)."""

from __future__ import annotations

import argparse
import io
import json
import uuid

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.cli.results import print_results, register, results


def build_parser() -> argparse.ArgumentParser:
    """A parser with only this subcommand (the lead adds it to the actlab dispatcher)."""
    parser = argparse.ArgumentParser(prog="actlab")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _forwarding(client: TestClient) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        response = client.request(request.method, request.url.raw_path.decode(), content=request.content)
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    return httpx.MockTransport(handler)


def _run(client: TestClient, *arguments: str) -> str:
    parsed = build_parser().parse_args(["results", *arguments, "--url", "http://service"])
    output = io.StringIO()
    print_results(parsed, output=output, transport=_forwarding(client))
    return output.getvalue()


def test_table_lists_activations_best_first_with_verdicts_and_findings(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    text = _run(client, str(finished_experiment))
    lines = text.splitlines()
    assert lines[0] == "test_accuracy (final), baseline relu"
    assert lines[1].split()[:3] == ["rank", "activation", "n"]
    body = lines[3:7]
    assert body[-1].split()[1] == "sigmoid" and "worse" in body[-1]
    assert any("relu" in line and "baseline" in line for line in body)
    assert "- sigmoid failed to train" in text


@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_csv_and_json_print_the_service_table(
    client: TestClient, finished_experiment: uuid.UUID, output_format: str
) -> None:
    text = _run(client, str(finished_experiment), "--format", output_format, "--summary", "best")
    frame = pd.read_csv(io.StringIO(text)) if output_format == "csv" else pd.DataFrame(json.loads(text))
    assert list(frame["activation"]) == ["relu", "sigmoid", "prelu", "swish_b"]
    assert set(frame["summary"]) == {"best"}


def test_bad_id_and_bad_option_exit_with_status_2(
    client: TestClient, finished_experiment: uuid.UUID, capsys: pytest.CaptureFixture[str]
) -> None:
    parsed = build_parser().parse_args(["results", "not-an-id", "--url", "http://service"])
    assert results(parsed, transport=_forwarding(client)) == 2
    assert "is not an experiment id" in capsys.readouterr().err
    parsed = build_parser().parse_args(
        ["results", str(finished_experiment), "--metric", "accuracy", "--url", "http://x"]
    )
    assert results(parsed, transport=_forwarding(client)) == 2
    assert "query.metric: metric must be one of" in capsys.readouterr().err
