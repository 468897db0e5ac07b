"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked by parsing it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from defectloop.cli import app
from defectloop.settings import SECRET_FIELDS, Settings, env_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _command_names() -> set[tuple[str, ...]]:
    names: set[tuple[str, ...]] = {(str(c.name),) for c in app.registered_commands}
    for group in app.registered_groups:
        assert group.typer_instance is not None
        for command in group.typer_instance.registered_commands:
            names.add((str(group.name), str(command.name)))
    return names


def test_the_whole_stack_is_described(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "label-studio", "migrate", "watcher", "worker", "beat", "receiver"} <= set(
        services
    )
    for name in ("redis", "postgres", "label-studio"):
        assert "healthcheck" in services[name], f"{name} needs a healthcheck for depends_on"


def test_processes_use_real_cli_commands(compose: dict[str, Any]) -> None:
    known = _command_names()
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] == "defectloop":
            words = tuple(word for word in command[1:] if not word.startswith(("/", "-")))
            assert words[:1] in known or words[:2] in known, f"{name}: {command} is not a defectloop command"


def test_every_queue_is_consumed_and_training_has_a_worker_of_its_own(compose: dict[str, Any]) -> None:
    from workers.queues import Queue

    consumers: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:2] == ["defectloop", "worker"]:
            queues = command[command.index("--queues") + 1] if "--queues" in command else ""
            consumers[name] = set(queues.split(",")) if queues else {q.value for q in Queue}
    assert set().union(*consumers.values()) == {q.value for q in Queue}
    training = [name for name, queues in consumers.items() if Queue.TRAINING.value in queues]
    assert training, consumers
    assert all(consumers[name] == {Queue.TRAINING.value} for name in training), consumers


def test_processes_wait_for_the_migration(compose: dict[str, Any]) -> None:
    for name in ("watcher", "worker", "labeller", "trainer", "beat", "receiver"):
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_environment_names_are_real_settings(compose: dict[str, Any]) -> None:
    known = {env_name(field) for field in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("DEFECTLOOP_"):
                assert variable in known, f"{name} sets unknown setting {variable}"


def test_the_distributed_stack_uses_redis_and_postgres(compose: dict[str, Any]) -> None:
    env = compose["services"]["worker"]["environment"]
    assert env["DEFECTLOOP_BROKER_URL"].startswith("redis://redis:")
    assert env["DEFECTLOOP_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    secret_variables = {env_name(field) for field in SECRET_FIELDS} | {
        "POSTGRES_PASSWORD",
        "LABEL_STUDIO_PASSWORD",
        "LABEL_STUDIO_USER_TOKEN",
    }
    for name, service in compose["services"].items():
        for variable, value in service.get("environment", {}).items():
            if variable in secret_variables:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (
                    f"{name}.{variable} must come from the env"
                )
        database_url = service.get("environment", {}).get("DEFECTLOOP_DATABASE_URL", "")
        if database_url:
            password = database_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
            assert password.startswith("${"), f"{name}: database password must come from the env"


def test_dockerfile_installs_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("defectloop", "workers", "labelling", "models", "db"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_labelling_is_initialised_once_label_studio_is_healthy(compose: dict[str, Any]) -> None:
    init = compose["services"]["labelling-init"]
    assert init["command"] == ["defectloop", "labelling", "init"]
    assert init["restart"] == "no"  # a one-shot job, idempotent if run again
    assert init["depends_on"]["label-studio"]["condition"] == "service_healthy"
    assert init["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # Label Studio must be able to call the receiver on the compose network.
    assert compose["services"]["label-studio"]["environment"]["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert init["environment"]["DEFECTLOOP_PUBLIC_URL"].startswith("${DEFECTLOOP_PUBLIC_URL:?")
