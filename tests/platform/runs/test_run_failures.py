"""Why a job ended, as the run's error: redaction, bounds, the local launcher's account, pre-flight parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from facefleet.platform.db.models import Run
from facefleet.platform.errors import FacefleetError
from facefleet.platform.runs import ray_preflight
from facefleet.platform.runs.failures import (
    LOG_TAIL_LINES,
    MAX_ERROR_CHARS,
    describe,
    redact,
    settings_secrets,
)
from facefleet.platform.runs.kuberay import RayJobStatus, describe_status
from facefleet.platform.runs.launchers import LocalLauncher, job_runtime_env, job_submission_payload
from facefleet.platform.runs.ray_jobs import RayJobsClient
from facefleet.platform.settings import Settings
from tests.fixtures.servers import free_port


def test_redact_masks_passwords_keys_and_tokens_but_keeps_the_story() -> None:
    log = "\n".join(
        [
            "sqlalchemy.exc.OperationalError: postgresql+psycopg://facefleet:hunter2@db:5432/ff refused",
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
            'config {"password": "pw-123456", "api_key": "ffk_abcdefgh"}',
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
            "key id AKIAIOSFODNN7EXAMPLE in use; token=abc123def",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----",
            "the webhook secret value s3cr3t-webhook leaked",
            "ModuleNotFoundError: No module named 'facefleet' (exit code 1)",
        ]
    )
    out = redact(log, ["s3cr3t-webhook"])
    for secret in (
        "hunter2",
        "wJalrXUtnFEMI",
        "pw-123456",
        "ffk_abcdefgh",
        "eyJhbGciOiJIUzI1NiJ9",
        "AKIAIOSFODNN7EXAMPLE",
        "abc123def",
        "MC4CAQAwBQYDK2VwBCIEIA",
        "s3cr3t-webhook",
    ):
        assert secret not in out, secret
    assert "postgresql+psycopg://facefleet:***@db:5432/ff" in out
    assert "No module named 'facefleet' (exit code 1)" in out


def test_settings_secrets_are_the_values_this_process_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    settings = Settings(
        database_url="postgresql+psycopg://u:db-pass-1@h/ff",
        api_key=SecretStr("api-key-value"),
        ray_auth_token=SecretStr("ray-token-value"),
    )
    found = settings_secrets(settings)
    assert {"db-pass-1", "api-key-value", "ray-token-value", "aws-secret-value"} <= set(found)
    # A known value is masked even where no pattern would find it.
    assert redact("password was db-pass-1 and ray-token-value", found) == "password was *** and ***"


def test_describe_keeps_the_headline_and_a_bounded_tail() -> None:
    log = "\n".join(f"line {i} " + "x" * 200 for i in range(5000)) + "\nTraceback: the real cause"
    text = describe("Ray job j FAILED: Job entrypoint command failed with exit code 1", log)
    assert text.startswith("Ray job j FAILED: Job entrypoint command failed with exit code 1\n")
    assert text.endswith("Traceback: the real cause") and len(text) <= MAX_ERROR_CHARS
    assert text.count("\n") <= LOG_TAIL_LINES + 1
    assert "line 0 " not in text


def test_a_local_worker_that_dies_is_described_by_its_exit_code_and_log(tmp_path: Path) -> None:
    # A database that refuses connections: the worker cannot even read its run, let alone record its end.
    settings = Settings(
        data_dir=tmp_path, database_url=f"postgresql+psycopg://ff:Sup3r-Secret@127.0.0.1:{free_port()}/ff"
    )
    launcher = LocalLauncher(settings)
    run = Run(id=41)
    run.launcher_job_id = launcher.start(run)
    assert launcher.wait(run.launcher_job_id, 120) == 1
    assert launcher.status(run.launcher_job_id) == "finished"
    error = launcher.failure(run) or ""
    assert error.startswith(f"worker process {run.launcher_job_id} exited with code 1 (log: ")
    assert "last lines of the job's log:" in error and "OperationalError" in error
    assert "Sup3r-Secret" not in error
    assert launcher.status("test-job-1") == "unknown"  # not a pid: not ours


def test_kuberay_status_is_described_with_its_reason() -> None:
    status = RayJobStatus(
        name="facefleet-run-3",
        job_status="FAILED",
        deployment_status="Failed",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
    )
    assert describe_status(status) == (
        "RayJob facefleet-run-3: job FAILED, deployment Failed, reason AppFailed: "
        "Job entrypoint command failed with exit code 1"
    )
    assert describe_status(RayJobStatus(name="x")) == "RayJob x: job not started, deployment unknown"


def test_the_runtime_env_option_is_merged_into_every_job(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        ray_address="http://head:8265",
        ray_runtime_env={"pip": ["facefleet==0.1.0"], "env_vars": {"PATH": "/opt/ff/bin:/usr/bin", "X": 1}},
    )
    payload = job_submission_payload(Run(id=5), settings)
    assert payload["runtime_env"]["pip"] == ["facefleet==0.1.0"]
    env_vars = payload["runtime_env"]["env_vars"]
    assert env_vars["PATH"] == "/opt/ff/bin:/usr/bin" and env_vars["X"] == "1"
    assert env_vars["FACEFLEET_STORE_URL"].startswith("file://")
    assert job_runtime_env(settings, worker_env=False) == {
        "pip": ["facefleet==0.1.0"],
        "env_vars": {"PATH": "/opt/ff/bin:/usr/bin", "X": "1"},
    }
    assert settings.ray_runtime_env == {
        "pip": ["facefleet==0.1.0"],
        "env_vars": {"PATH": "/opt/ff/bin:/usr/bin", "X": 1},
    }  # the setting itself is left as given
    shown = json.loads(settings.masked()["ray_runtime_env"])
    assert shown["env_vars"] == {"PATH": "********", "X": "********"} and shown["pip"] == ["facefleet==0.1.0"]


def test_the_runtime_env_option_is_read_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEFLEET_RAY_RUNTIME_ENV", '{"py_modules": ["s3://bucket/facefleet.zip"]}')
    assert Settings().ray_runtime_env == {"py_modules": ["s3://bucket/facefleet.zip"]}


def test_preflight_problems_name_the_place_the_interpreter_and_the_cause() -> None:
    report = {
        "head": {"executable": "/usr/bin/python3", "python": "3.11.2", "error": "ModuleNotFoundError: x"},
        "nodes": [
            {"executable": "/venv/bin/python", "python": "3.11.7", "version": "0.1.0", "node": "10.0.0.2"},
            {
                "executable": "/venv/bin/python",
                "python": "3.11.7",
                "version": "0.0.9",
                "path": "/p",
                "node": "n3",
            },
        ],
    }
    found = ray_preflight.problems(report, "0.1.0")
    assert found == [
        "on the head, where the job's entrypoint runs, /usr/bin/python3 (Python 3.11.2) fails to import "
        "facefleet: ModuleNotFoundError: x",
        "on node n3, /venv/bin/python (Python 3.11.7) has facefleet 0.0.9 (/p), not 0.1.0",
    ]
    assert ray_preflight._parse("noise\n" + ray_preflight.MARK + json.dumps(report) + "\n") == report
    assert ray_preflight._parse("python: not found") is None
    assert "python -c " in ray_preflight.probe_entrypoint()


def test_an_unreachable_ray_head_is_a_503_that_names_the_address() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(FacefleetError) as error:
        RayJobsClient(address, timeout=5).info("facefleet-run-1-abc")
    assert error.value.status_code == 503
    assert f"could not reach the Ray Jobs API at {address}" in error.value.message
    assert "FACEFLEET_RAY_ADDRESS" in error.value.message
