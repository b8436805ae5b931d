"""``actlab.Client`` against the real app: requests forwarded in process to FastAPI's TestClient."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from actlab import Client, NotFound, Plot, QuotaExceeded, SpecError
from actlab.connection import read_saved_key
from app.auth.local import write_local_key
from app.dependencies import get_dispatcher
from app.main import create_app
from tests.api.conftest import RecordingDispatcher, small_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _forwarding(test_client: TestClient) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        response = test_client.request(
            request.method, request.url.raw_path.decode(), content=request.content, headers=dict(request.headers)
        )
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    return httpx.MockTransport(handler)


def _client(test_client: TestClient) -> Client:
    return Client("http://service", transport=_forwarding(test_client))


@pytest.fixture
def submitting_app(app: FastAPI) -> FastAPI:
    """The app with a dispatcher that records the queued runs instead of sending them."""
    app.dependency_overrides[get_dispatcher] = RecordingDispatcher
    return app


def test_submit_a_dict_a_json_string_or_a_file_and_read_the_experiment_back(
    submitting_app: FastAPI, tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(small_spec(name="from a file")))
    with TestClient(submitting_app) as test_client, _client(test_client) as client:
        submitted = [
            client.submit(small_spec(name="from a dict"), idempotency_key="first"),
            client.submit(json.dumps(small_spec(name="from a string"))),
            client.submit(spec_file),
            client.submit(str(spec_file)),
        ]
        assert [experiment.status()["name"] for experiment in submitted] == [
            "from a dict",
            "from a string",
            "from a file",
            "from a file",
        ]
        assert submitted[0].status()["status"] == "queued"
        # The same Idempotency-Key and spec is the first experiment again.
        assert client.submit(small_spec(name="from a dict"), idempotency_key="first").id == submitted[0].id
        assert client.experiment(submitted[1].id).data["name"] == "from a string"
        assert submitted[0].report_url == f"http://service/experiments/{submitted[0].id}"


def test_experiments_iterate_every_page_newest_first_with_filters(submitting_app: FastAPI) -> None:
    with TestClient(submitting_app) as test_client, _client(test_client) as client:
        ids = [client.submit(small_spec(name=f"grid {index}")).id for index in range(5)]
        listed = list(client.experiments(page_size=2))
        assert [experiment.id for experiment in listed] == ids[::-1]
        assert [experiment.id for experiment in client.experiments(name="GRID 3")] == [ids[3]]
        assert list(client.experiments(status="succeeded")) == []
        assert len(list(client.experiments(status=["queued", "running"], page_size=3))) == 5
        spirals = client.submit(small_spec(name="on spirals", dataset={"name": "spirals"})).id
        assert [experiment.id for experiment in client.experiments(dataset="spirals")] == [spirals]
        assert len(list(client.experiments(dataset="digits", page_size=2))) == 5


def test_a_rejected_spec_raises_spec_error_with_the_servers_field_messages(submitting_app: FastAPI) -> None:
    with TestClient(submitting_app) as test_client, _client(test_client) as client, pytest.raises(SpecError) as raised:
        client.submit(small_spec(activations=["relu", "no_such_activation"]))
    error = raised.value
    assert error.http_status == 422
    # The server's problems as it sent them, and one line per field in the message (as the CLI prints it).
    assert [item["loc"] for item in error.errors] == ["activations.1.name"]
    assert error.errors[0]["msg"].startswith("unknown activation 'no_such_activation'; allowed: ")
    assert "  activations.1.name: unknown activation 'no_such_activation'" in str(error)


def test_an_unknown_experiment_raises_not_found(client: TestClient) -> None:
    with _client(client) as actlab_client, pytest.raises(NotFound) as raised:
        actlab_client.experiment(str(uuid.uuid4()))
    assert raised.value.http_status == 404


def test_over_the_submission_quota_raises_quota_exceeded_with_retry_after(settings: Any) -> None:
    app = create_app(settings.model_copy(update={"max_submissions_per_minute": 1, "max_active_arms_per_owner": 0}))
    app.dependency_overrides[get_dispatcher] = RecordingDispatcher
    with TestClient(app) as test_client, _client(test_client) as client:
        client.submit(small_spec())
        with pytest.raises(QuotaExceeded) as raised:
            client.submit(small_spec())
    assert raised.value.http_status == 429
    assert raised.value.retry_after is not None and 1 <= raised.value.retry_after <= 60
    assert "ACTLAB_MAX_SUBMISSIONS_PER_MINUTE" in str(raised.value)


def test_a_finished_experiment_gives_its_tables_as_data_frames(
    client: TestClient, finished_experiment: uuid.UUID
) -> None:
    with _client(client) as actlab_client:
        experiment = actlab_client.experiment(str(finished_experiment))
        assert experiment.wait(progress=False)["status"] == "partial"
        metrics = experiment.metrics()
        assert {"run_id", "activation", "seed", "epoch", "test_accuracy"} <= set(metrics.columns)
        assert set(experiment.metrics(activation="relu")["activation"]) == {"relu"}
        layers = experiment.layer_metrics()
        assert {"layer", "grad_norm", "dead_fraction"} <= set(layers.columns)
        summary = experiment.results()
        assert list(summary["activation"]) == ["relu", "sigmoid", "prelu", "swish_b"]
        assert {"mean", "ci_low", "ci_high", "rank", "verdict"} <= set(summary.columns)
        assert set(experiment.results(summary="best")["summary"]) == {"best"}
        assert {"seed", "value"} <= set(experiment.results(view="runs").columns)
        assert any("sigmoid" in sentence for sentence in experiment.recommendation()["sentences"])


def test_wait_shows_a_progress_bar_and_returns_the_final_state(
    client: TestClient, finished_experiment: uuid.UUID, capsys: pytest.CaptureFixture[str]
) -> None:
    with _client(client) as actlab_client:
        final = actlab_client.experiment(str(finished_experiment)).wait(timeout=60)
    assert final["status"] == "partial"
    assert "epoch" in capsys.readouterr().err


def test_a_plot_is_png_bytes_that_jupyter_shows_inline(client: TestClient, finished_experiment: uuid.UUID) -> None:
    with _client(client) as actlab_client:
        experiment = actlab_client.experiment(str(finished_experiment))
        plot = experiment.plot("learning-curves")
        svg = experiment.plot("learning-curves", format="svg")
        with pytest.raises(SpecError) as raised:
            experiment.plot("no_such_plot")
    assert isinstance(plot, Plot)
    assert bytes(plot).startswith(PNG_SIGNATURE) and plot._repr_png_() == bytes(plot)
    assert plot._repr_svg_() is None
    assert "<svg" in (svg._repr_svg_() or "")
    assert "plot kind 'no_such_plot' is unknown" in raised.value.errors[0]["msg"]


def test_the_url_and_key_default_to_the_environment_then_the_key_serve_saved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x", "status": "queued"})

    write_local_key("http://localhost:8123", "al_saved", path=tmp_path / "credentials.json")
    assert read_saved_key("http://127.0.0.1:8123/") == "al_saved"
    monkeypatch.setenv("ACTLAB_URL", "http://localhost:8123/")
    Client(transport=httpx.MockTransport(handler)).experiment("x")
    monkeypatch.setenv("ACTLAB_API_KEY", "al_environment")
    Client(transport=httpx.MockTransport(handler)).experiment("x")
    Client(api_key="al_given", transport=httpx.MockTransport(handler)).experiment("x")
    assert [str(request.url) for request in seen] == ["http://localhost:8123/v1/experiments/x"] * 3
    assert [request.headers["Authorization"] for request in seen] == [
        "Bearer al_saved",
        "Bearer al_environment",
        "Bearer al_given",
    ]


def test_robustness_comes_back_as_a_typed_data_frame(client: TestClient, db: Any) -> None:
    from tests.api.test_robustness import _measured_grid

    experiment_id = _measured_grid(client, db)
    with _client(client) as actlab_client:
        experiment = actlab_client.experiment(experiment_id)
        table = experiment.robustness()
        assert list(table.columns) == ["run_id", "activation", "seed", "cell", "kind", "strength", "accuracy", "loss"]
        assert len(table) == 36 and str(table["strength"].dtype) == "float64" and str(table["seed"].dtype) == "int64"
        fgsm = experiment.robustness(kind="fgsm", activation="tanh")
        assert set(fgsm["kind"]) == {"fgsm"} and set(fgsm["activation"]) == {"tanh"} and len(fgsm) == 12
        summary = experiment.results(view="robustness")
        assert set(summary["verdict"]) == {"baseline", "better", "worse", "equivalent"}
