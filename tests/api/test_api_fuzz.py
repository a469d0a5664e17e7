"""Schemathesis fuzzes every route of the OpenAPI document in-process: no 500s, answers match the schema."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from facefleet.api.app import create_app
from facefleet.platform.auth.service import create_api_key
from facefleet.platform.db.models import Run
from facefleet.platform.devices import service as devices
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore
from tests.api.conftest import make_imagefolder, make_lfw_folder

EXAMPLES_PER_OPERATION = 15
# Checked last, in this order: they can revoke the fuzzer's own credentials (device 1 and key 1 are ids the
# fuzzer tries), which would leave every later operation answering 401.
RUN_LAST = (
    "POST /v1/devices/{device_id}/enrollment-token",
    "POST /v1/devices/{device_id}/disable",
    "DELETE /v1/keys/{key_id}",
)


def _order(operation: Any) -> int:
    label = f"{operation.method.upper()} {operation.path}"
    return RUN_LAST.index(label) + 1 if label in RUN_LAST else 0


def _no_launch(session: Session, run: Run) -> None:
    """The run starter: runs stay queued with no job, so nothing trains and cancel never signals a process."""


@dataclass
class Fuzzed:
    app: FastAPI
    admin: dict[str, str]
    device: dict[str, str]
    sources: list[str]
    engine: Engine


@pytest.fixture
def fuzzed(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> Fuzzed:
    settings = get_settings()
    settings.dataset_roots = [str(tmp_path)]  # the prepared sources below are under this root
    app = create_app(settings, engine=sqlite_engine, store=local_store)
    # POST /v1/runs defaults to start=true; this hook (the one the API tests use) keeps the launcher out.
    app.state.run_starter = _no_launch
    with Session(sqlite_engine) as session:
        _, admin_token = create_api_key(session, name="fuzzer", role="admin")
        _, enrollment = devices.register_device(session, name="fuzz-terminal", group="fuzz")[:2]
        _, credential = devices.enroll(session, enrollment)
        session.commit()
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    not_archive = tmp_path / "notes.zip"
    not_archive.write_text("this is not a zip archive")
    sources = [
        str(make_imagefolder(tmp_path / "faces", identities=2, images=2)),
        str(make_lfw_folder(tmp_path / "lfw")),
        str(empty),
        str(not_archive),
        str(tmp_path / "missing"),
        "s3://no-such-bucket/prefix",
    ]
    return Fuzzed(
        app,
        {"Authorization": f"Bearer {admin_token}"},
        {"Authorization": f"Bearer {credential}"},
        sources,
        sqlite_engine,
    )


def _pin_source(sources: list[str]) -> Callable[[Any], st.SearchStrategy[Any]]:
    """POST /v1/datasets reads ``source`` from the server's disk: a fuzzed value such as ``/`` would scan the
    whole machine, so the fuzzer picks it from prepared folders and files (every other field stays fuzzed)."""

    def pin(case: Any) -> st.SearchStrategy[Any]:
        if not (isinstance(case.body, dict) and isinstance(case.body.get("source"), str)):
            return st.just(case)

        def with_source(source: str) -> Any:
            case.body = {**case.body, "source": source}
            return case

        return st.sampled_from(sources).map(with_source)

    return pin


def _fuzz_operation(operation: Any, mode: GenerationMode, fuzzed: Fuzzed, failures: list[str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    headers = fuzzed.device if operation.path.startswith("/v1/device/") else fuzzed.admin
    strategy = operation.as_strategy(generation_mode=mode)
    if label == "POST /v1/datasets":
        strategy = strategy.flatmap(_pin_source(fuzzed.sources))
    checks = [not_a_server_error, response_schema_conformance]

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,  # the same examples every run: a failure here is reproducible
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing case is printed as-is
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        try:
            response = case.call(headers=headers)
        except Exception as error:  # noqa: BLE001 - the app raised past its handlers: the client saw a 500
            failures.append(
                f"{label} [{mode.value}]: raised {type(error).__name__}: {str(error)[:300]}\n"
                f"  {case.as_curl_command()[:600]}"
            )
            return
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except (AssertionError, FailureGroup) as error:
            failures.append(f"{label} [{mode.value}]: {str(error)[:1500]}")

    try:
        run()
    except Unsatisfiable:
        # Negative mode has nothing to break in an operation without parameters or a body (GET /healthz).
        assert mode is GenerationMode.NEGATIVE, f"{label}: no valid example could be generated"


def test_fuzz_every_route_answers_without_server_errors(fuzzed: Fuzzed) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=_order)
    assert len(operations) > 30, "the schema lost its routes"
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, fuzzed, failures)
    assert not failures, "\n\n".join(failures[:20])
    with Session(fuzzed.engine) as session:
        # Fuzzed run creation queued runs but no launcher ever gave one a job.
        assert session.scalar(select(func.count()).where(Run.launcher_job_id.is_not(None))) == 0
