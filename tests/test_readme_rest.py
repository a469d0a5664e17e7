"""The README's curl examples: one for every write route of the API, each body valid for its schema."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path

import pytest
from pydantic import BaseModel

from facefleet.api.app import create_app
from facefleet.api.routes.models import PromoteRequest
from facefleet.api.schemas import AliasUpdate, ApiKeyCreate
from facefleet.platform.datasets.schemas import RegisterRequest
from facefleet.platform.deployments.schemas import DeploymentCreate, StatusReport
from facefleet.platform.devices.schemas import DeviceCreate, EnrollRequest, HeartbeatRequest
from facefleet.platform.inspections.schemas import (
    AttemptUpload,
    CollectionSettings,
    InspectionSetCreate,
    VerdictRequest,
)
from facefleet.platform.policies.schemas import PolicyCreate, PolicyUpdate
from facefleet.platform.runs.schemas import CancelRequest, RunCreate

README = Path(__file__).resolve().parents[1] / "README.md"
BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("POST", "/v1/keys"): ApiKeyCreate,
    ("POST", "/v1/datasets"): RegisterRequest,
    ("POST", "/v1/runs"): RunCreate,
    ("POST", "/v1/runs/{run_id}:cancel"): CancelRequest,
    ("PUT", "/v1/models/{name}/aliases/{alias}"): AliasUpdate,
    ("POST", "/v1/models/{name}/versions/{version}:promote"): PromoteRequest,
    ("POST", "/v1/policies"): PolicyCreate,
    ("PATCH", "/v1/policies/{policy_id}"): PolicyUpdate,
    ("POST", "/v1/devices"): DeviceCreate,
    ("POST", "/v1/deployments"): DeploymentCreate,
    ("POST", "/v1/device/enroll"): EnrollRequest,
    ("POST", "/v1/device/status"): StatusReport,
    ("POST", "/v1/device/heartbeat"): HeartbeatRequest,
    ("POST", "/v1/device/attempts"): AttemptUpload,
    ("PUT", "/v1/collection/{group}"): CollectionSettings,
    ("POST", "/v1/inspections/{attempt_id}"): VerdictRequest,
    ("POST", "/v1/inspection-sets"): InspectionSetCreate,
}


def curl_calls() -> list[tuple[str, str, list[str]]]:
    """(method, path, argv) of every `curl -X ...` line in the README."""
    calls = []
    for line in README.read_text().splitlines():
        line = line.strip()
        if not line.startswith("curl ") or " -X " not in line:
            continue
        argv = shlex.split(line)
        method = argv[argv.index("-X") + 1]
        url = next(arg for arg in argv if arg.startswith("$API/"))
        calls.append((method, url.removeprefix("$API").split("?", 1)[0], argv))  # the route, not its query
    return calls


@functools.cache
def write_routes() -> list[tuple[str, str]]:
    """(method, path template) of every documented write route, from the app's OpenAPI document."""
    paths = create_app().openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for method in operations
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    ]


def _matches(route: tuple[str, str], method: str, path: str) -> bool:
    pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route[1]))
    return route[0] == method and re.fullmatch(pattern, path) is not None


def test_every_write_route_has_a_curl_example() -> None:
    calls = curl_calls()
    missing = []
    for route in write_routes():
        if not any(_matches(route, m, p) for m, p, _ in calls):
            missing.append(f"{route[0]} {route[1]}")
    assert len(write_routes()) >= 20
    assert not missing, f"README has no curl example for {missing}"


@pytest.mark.parametrize(
    ("method", "path", "argv"), curl_calls(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_curl_body_is_valid_for_its_route(method: str, path: str, argv: list[str]) -> None:
    routes = [route for route in write_routes() if _matches(route, method, path)]
    assert routes, f"{method} {path}: no such route"
    schema = BODIES.get(routes[0])
    if "-d" in argv:
        assert schema is not None, f"{method} {routes[0][1]} takes no JSON body"
        assert (
            "Content-Type: application/json" in argv
            or "$JSON" in " ".join(argv)
            or any(a == "-H" and "JSON" in b for a, b in zip(argv, argv[1:], strict=False))
        )
        schema.model_validate(json.loads(argv[argv.index("-d") + 1]))
    elif "-F" in argv:
        fields = {argv[i + 1].split("=", 1)[0] for i, arg in enumerate(argv) if arg == "-F"}
        assert fields <= {"file", "name", "kind", "description", "tags", "min_images_per_identity"}
        assert {"file", "name"} <= fields
    else:
        # Routes whose body is optional or absent (cancel and promote take defaults).
        assert schema is None or not any(f.is_required() for f in schema.model_fields.values())


def test_readme_policy_example_passes_its_cross_checks() -> None:
    body = next(
        json.loads(a[a.index("-d") + 1]) for m, p, a in curl_calls() if (m, p) == ("POST", "/v1/policies")
    )
    policy = PolicyCreate.model_validate(body)
    assert policy.auto_promote and policy.verification_sets and policy.cron
    assert re.fullmatch(r"[a-z0-9-]+", policy.name)
