"""The catalog, health checks and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.catalog import ACTIVATIONS, INIT_SCHEMES, MODEL_KINDS, OPTIMIZERS, SCHEDULES
from app.catalog_datasets import DATASETS
from app.config import Settings, SpecLimits
from app.main import create_app
from app.spec import EXAMPLE_SPEC


def test_catalog_lists_activations_datasets_and_limits(client: TestClient) -> None:
    response = client.get("/v1/catalog")
    assert response.status_code == 200
    catalog = response.json()

    activations = {entry["name"]: entry for entry in catalog["activations"]}
    assert set(activations) == set(ACTIVATIONS)
    leaky = activations["leaky_relu"]
    assert leaky["family"] == "classic"
    assert leaky["parameters"] == [
        {
            "name": "negative_slope",
            "kind": "float",
            "default": 0.01,
            "description": "Slope for x < 0.",
            "minimum": 0.0,
            "maximum": 1.0,
            "exclusive_minimum": False,
            "choices": [],
        }
    ]
    assert activations["gelu"]["parameters"][0]["choices"] == ["none", "tanh"]
    assert activations["silu"]["aliases"] == ["swish"]
    assert activations["relu"]["auto_init_description"] == "kaiming_normal(relu)"

    datasets = {entry["name"]: entry for entry in catalog["datasets"]}
    assert set(datasets) == set(DATASETS)
    assert datasets["mnist1d"]["input_shape"] == [1, 40]
    mnist1d_defaults = {entry["name"]: entry["default"] for entry in datasets["mnist1d"]["parameters"]}
    assert mnist1d_defaults == {
        "num_samples": 5000,
        "train_split": 0.8,
        "scale_coeff": 0.4,
        "max_translation": 48,
        "corr_noise_scale": 0.25,
        "iid_noise_scale": 0.02,
        "shear_scale": 0.75,
        "seed": 42,
    }
    assert (datasets["digits"]["classes"], datasets["digits"]["train_size"]) == (10, 1437)
    assert [entry["name"] for entry in catalog["model_kinds"]] == ["mlp", "cnn", "rnn"]
    assert {entry["name"] for entry in catalog["optimizers"]} == {"adam", "adamw", "sgd", "rmsprop"}
    assert "kaiming_normal" in {entry["name"] for entry in catalog["init_schemes"]}
    assert "sigmoid" in catalog["expression"]["functions"]

    limits = {entry["name"]: entry for entry in catalog["limits"]}
    assert set(SpecLimits.model_fields) <= set(limits)
    assert limits["max_epochs"]["value"] == 200
    assert limits["max_epochs"]["environment_variable"] == "ACTLAB_MAX_EPOCHS"
    assert limits["max_body_bytes"]["value"] == 64 * 1024


def test_catalog_reports_the_limits_in_force(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_epochs": 7, "auth_required": False}))) as client:
        limits = {entry["name"]: entry["value"] for entry in client.get("/v1/catalog").json()["limits"]}
    assert limits["max_epochs"] == 7


def test_healthz_and_readyz_when_everything_answers(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    assert str(tmp_path / "broker") in body["checks"]["broker"]["detail"]


def test_readyz_names_an_unreachable_database(settings: Settings, tmp_path: Path) -> None:
    broken = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/missing/folder/db.sqlite"})
    with TestClient(create_app(broken)) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is False
    assert "database unreachable" in checks["database"]["detail"]
    assert checks["broker"]["ok"] is True


def test_readyz_names_an_unreachable_redis_broker(settings: Settings) -> None:
    # Port 1 on loopback refuses connections at once.
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert (checks["database"]["ok"], checks["broker"]["ok"]) == (True, False)
    assert "redis broker unreachable" in checks["broker"]["detail"]


def test_readyz_pings_a_live_redis(settings: Settings) -> None:
    live = settings.model_copy(update={"broker_url": "redis://127.0.0.1:6379/0"})
    with TestClient(create_app(live)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["broker"]["detail"] == "redis broker answers PING"


def test_readyz_reports_an_unwritable_broker_folder(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    broken = settings.model_copy(update={"broker_folder": blocker / "broker"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "not writable" in response.json()["checks"]["broker"]["detail"]


def test_openapi_documents_the_spec_with_its_example(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    submit = document["paths"]["/v1/experiments"]["post"]
    body = submit["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ExperimentSpec"}
    # The OpenAPI document leaves out null values (grad_clip), which are the defaults anyway.
    example = {**EXAMPLE_SPEC, "training": {k: v for k, v in EXAMPLE_SPEC["training"].items() if v is not None}}
    assert body["examples"]["classic_five"]["value"] == example
    schemas = document["components"]["schemas"]
    assert schemas["ExperimentSpec"]["examples"] == [EXAMPLE_SPEC]
    for name in ("ActivationSpec", "DatasetSpec", "MlpSpec", "TrainingSpec", "ExperimentDetail", "RunDetail"):
        assert name in schemas
    # Every reference resolves.
    text = client.get("/openapi.json").text
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name
    assert set(submit["responses"]) >= {"200", "202", "409", "413", "422"}
    assert client.get("/docs").status_code == 200


def test_openapi_enums_are_the_catalog_names(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["DatasetSpec"]["properties"]["name"]["enum"] == list(DATASETS)
    training = schemas["TrainingSpec"]["properties"]
    assert training["optimizer"]["enum"] == list(OPTIMIZERS)
    assert training["schedule"]["enum"] == list(SCHEDULES)
    assert training["init"]["enum"] == list(INIT_SCHEMES)
    model = schemas["ExperimentSpec"]["properties"]["model"]
    assert set(model["discriminator"]["mapping"]) == set(MODEL_KINDS)


def test_catalog_entries_name_their_own_parameters() -> None:
    # The per-entry rules (clip bounds, Kaiming slope, per-unit mode, class count, sample count)
    # refer to parameters by name; a typo would silently fall back to the default rule.
    for info in ACTIVATIONS.values():
        parameters = {parameter.name: parameter for parameter in info.parameters}
        named = [*(info.bounds or ()), *([info.slope_parameter] if info.slope_parameter else [])]
        assert set(named) <= set(parameters), info.name
        if info.per_unit_mode is not None:
            name, value = info.per_unit_mode
            assert value in parameters[name].choices, info.name
        assert (info.learnable_parameters > 0) == info.can_learn, info.name
    for dataset in DATASETS.values():
        parameters = {parameter.name: parameter for parameter in dataset.parameters}
        for name in (dataset.classes_parameter, dataset.samples_parameter):
            assert name is None or parameters[name].kind == "int", dataset.name
        assert dataset.classes_with({p.name: p.default for p in dataset.parameters}) == dataset.classes
        assert dataset.train_size_with({p.name: p.default for p in dataset.parameters}) == dataset.train_size
