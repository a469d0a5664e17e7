"""docker-compose.yml, .env.example and the Dockerfile say what the stack needs (offline, no Docker)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_checks import REPO, command_problem

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def facefleet_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "facefleet" in svc["image"]}


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "minio",
        "minio-bucket",
        "migrate",
        "ray-head",
        "ray-worker",
        "api",
        "scheduler",
    } <= set(services)
    assert set(facefleet_services(compose)) == {"migrate", "ray-head", "ray-worker", "api", "scheduler"}
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "minio-data:/data" in services["minio"]["volumes"]
    assert services["postgres"]["healthcheck"] and services["minio"]["healthcheck"]
    api_needs = services["api"]["depends_on"]
    assert api_needs["postgres"]["condition"] == "service_healthy"
    assert api_needs["minio"]["condition"] == "service_healthy"
    assert api_needs["migrate"]["condition"] == "service_completed_successfully"
    for name, svc in services.items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_every_facefleet_service_command_exists(compose: dict[str, Any]) -> None:
    problems = {name: command_problem(svc["command"]) for name, svc in facefleet_services(compose).items()}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_ray_head_binds_the_jobs_api(compose: dict[str, Any]) -> None:
    head = compose["services"]["ray-head"]
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    assert "--dashboard-host=0.0.0.0" in head["command"]
    env = head["environment"]
    assert env["FACEFLEET_RAY_ADDRESS"] == "http://ray-head:8265"
    assert env["RAY_AUTH_MODE"] == "disabled"
    # Never published beyond loopback: Ray runs without token auth.
    assert all(port.startswith("127.0.0.1:") for port in head.get("ports", []))
    assert "--address=ray-head:6379" in compose["services"]["ray-worker"]["command"]


def test_configuration_is_environment_only_and_secrets_come_from_env_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "env_file" not in text and "secrets:" not in text
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= required
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    referenced = set(re.findall(r"\$\{(\w+)", text))
    assert referenced <= set(example), f"document in .env.example: {sorted(referenced - set(example))}"
    assert all("CHANGE-ME" in example[name] for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD"))
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    for name, svc in facefleet_services(compose).items():
        env = svc["environment"]
        assert env["FACEFLEET_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["FACEFLEET_STORE_URL"].startswith("s3://"), name
        assert env["FACEFLEET_S3_ENDPOINT_URL"] == "http://minio:9000", name


def _final_stage(dockerfile: str) -> list[str]:
    lines = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    starts = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert len(starts) >= 2, "multi-stage build expected"
    return lines[starts[-1] :]


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    final = _final_stage(text)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    assert "/healthz" in text
    assert "ARG TORCH_VARIANT=cpu" in text and "cuda)" in text
    assert re.search(r"pip install \.(\s|$)", text), "install the package without extras"
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[dev]" not in instructions and "pytest" not in instructions
    assert "COPY alembic /app/alembic" in text and "FACEFLEET_ALEMBIC_DIR=/app/alembic" in text
    cmd = [line for line in final if line.startswith("CMD ")][-1]
    assert command_problem(yaml.safe_load(cmd[4:])) is None


def test_dockerignore_keeps_secrets_and_the_venv_out() -> None:
    ignored = Path(REPO / ".dockerignore").read_text().splitlines()
    assert {".env", ".venv", ".git", "tests"} <= set(ignored)
    for needed in ("facefleet", "alembic", "pyproject.toml", "README.md"):
        assert needed not in ignored


def test_api_server_settings_are_valid_and_match_the_cpus(compose: dict[str, Any]) -> None:
    """Workers, pool and admission reach the API through the shared environment, as valid settings."""
    from facefleet.platform.settings import Settings

    env = compose["services"]["api"]["environment"]
    values = {
        key.removeprefix("FACEFLEET_").lower(): re.sub(r"^\$\{[A-Z_]+:-(.*)\}$", r"\1", str(value))
        for key, value in env.items()
        if key in SERVER_SETTINGS
    }
    assert set(values) == {name.removeprefix("FACEFLEET_").lower() for name in SERVER_SETTINGS}
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.api_workers >= 2 and settings.db_pool_size >= 1
    assert "--workers" not in compose["services"]["api"]["command"]  # the setting decides


SERVER_SETTINGS = (
    "FACEFLEET_API_WORKERS",
    "FACEFLEET_DB_POOL_SIZE",
    "FACEFLEET_DB_MAX_OVERFLOW",
    "FACEFLEET_API_MAX_QUEUE",
    "FACEFLEET_API_MAX_WAIT_SECONDS",
)
