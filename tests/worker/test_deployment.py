"""Dockerfile and docker-compose.yml, checked by reading them (no Docker engine here): every command
they run must be a real subcommand of this CLI or a real import path, with the settings they set."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml", reason="pyyaml (a dev dependency) reads docker-compose.yml")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "migrate", "api", "worker-cpu", "worker-gpu"}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]


@pytest.mark.parametrize("name", ["migrate", "worker-cpu", "worker-gpu"])
def test_every_actlab_command_in_compose_is_a_real_subcommand(compose: dict[str, Any], name: str) -> None:
    command = _command(compose["services"][name])
    assert command[0] == "actlab"
    arguments = build_parser().parse_args(command[1:])
    assert callable(arguments.handler)
    if name.startswith("worker"):
        assert arguments.queues == [name.removeprefix("worker-")]


def test_the_api_runs_the_app_factory_after_the_migration(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    command = _command(api)
    assert command[:2] == ["uvicorn", "--factory"]
    module_name, _, factory_name = command[2].partition(":")
    assert callable(getattr(importlib.import_module(module_name), factory_name))
    assert "0.0.0.0" in command and "8000:8000" in api["ports"]
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_gpu_worker_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    devices = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


@pytest.mark.parametrize("name", ["migrate", "api", "worker-cpu", "worker-gpu"])
def test_services_get_production_settings_that_validate(compose: dict[str, Any], name: str) -> None:
    environment = compose["services"][name]["environment"]
    assert environment["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environment["BROKER_URL"].startswith("redis://")
    settings = Settings(**{"database_url": environment["DATABASE_URL"], "broker_url": environment["BROKER_URL"]})
    assert settings.visibility_timeout > settings.task_time_limit


def test_workers_stop_gracefully_within_docker_grace_period(compose: dict[str, Any]) -> None:
    soft_shutdown = Settings().worker_soft_shutdown_timeout
    for name in ("worker-cpu", "worker-gpu"):
        grace = compose["services"][name]["stop_grace_period"]
        assert int(grace.removesuffix("s")) > soft_shutdown


def test_dockerfile_installs_the_project_as_a_non_root_user_and_its_command_is_real() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for package in ("app", "worker", "migrations"):
        assert re.search(rf"^COPY {package} ", text, re.MULTILINE) and (ROOT / package).is_dir()
    assert "REMAP_SIGTERM=SIGQUIT" in text
    command = json.loads(re.findall(r"^CMD (\[.*\])", text, re.MULTILINE)[-1])
    assert command[0] == "actlab"
    assert callable(build_parser().parse_args(command[1:]).handler)


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".actlab", "actlab.db", "data"} <= ignored
