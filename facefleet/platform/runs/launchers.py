"""Launchers start the worker entrypoint `python -m facefleet.workers.train --run ID` somewhere and stop it.

Whatever the launcher, the worker writes the run's status to the database; a launcher's own status is only
used to notice a job that died without saying so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Protocol

from facefleet.platform.db.models import Run
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.settings import Settings, get_settings

JobState = Literal["running", "finished", "unknown"]
ENTRYPOINT_MODULE = "facefleet.workers.train"


def entrypoint_args(run_id: int) -> list[str]:
    return ["-m", ENTRYPOINT_MODULE, "--run", str(run_id)]


def worker_environment(settings: Settings) -> dict[str, str]:
    """What the worker needs to reach the same database and store as the control plane."""
    env = {
        "FACEFLEET_DATABASE_URL": settings.effective_database_url,
        "FACEFLEET_STORE_URL": settings.effective_store_url,
        "FACEFLEET_DATA_DIR": str(settings.data_dir.resolve()),
    }
    if settings.s3_endpoint_url:
        env["FACEFLEET_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


class Launcher(Protocol):
    name: str

    def start(self, run: Run) -> str:
        """Start the entrypoint for ``run``; return the launcher's job id."""

    def cancel(self, job_id: str) -> None:
        """Stop the job now (the worker's own cancel check is the graceful path)."""

    def status(self, job_id: str) -> JobState: ...


class LocalLauncher:
    """A child process in its own process group; the pid is the job id; logs in <data_dir>/runs/<id>.log."""

    name = "local"
    _children: dict[int, subprocess.Popen[bytes]] = {}

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    def log_path(self, run_id: int) -> Path:
        return self.settings.data_dir.resolve() / "runs" / f"{run_id}.log"

    def start(self, run: Run) -> str:
        log_path = self.log_path(run.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker_environment(self.settings)}
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, *entrypoint_args(run.id)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._children[child.pid] = child
        return str(child.pid)

    def cancel(self, job_id: str) -> None:
        try:
            os.killpg(int(job_id), signal.SIGTERM)
        except ProcessLookupError:
            pass

    def status(self, job_id: str) -> JobState:
        pid = int(job_id)
        child = self._children.get(pid)
        if child is not None:  # our own child: poll() also reaps it, so no zombie is left behind
            return "running" if child.poll() is None else "finished"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "finished"
        except PermissionError:
            return "unknown"
        return "running"

    def wait(self, job_id: str, timeout: float | None = None) -> int | None:
        child = self._children.get(int(job_id))
        return child.wait(timeout) if child is not None else None


def job_submission_payload(run: Run, settings: Settings) -> dict[str, Any]:
    """The body of POST /api/jobs/ (Ray Jobs REST API) for a run."""
    return {
        "entrypoint": "python " + " ".join(entrypoint_args(run.id)),
        "submission_id": f"facefleet-run-{run.id}-{os.urandom(3).hex()}",
        "runtime_env": {"env_vars": worker_environment(settings)},
        "metadata": {"facefleet_run_id": str(run.id)},
    }


class RayJobsLauncher:
    """The entrypoint submitted through the Ray Jobs REST API at FACEFLEET_RAY_ADDRESS (http://head:8265)."""

    name = "ray"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        if not self.settings.ray_address:
            raise InvalidInputError(
                "the ray launcher needs FACEFLEET_RAY_ADDRESS (e.g. http://ray-head:8265)"
            )
        self.address = self.settings.ray_address.rstrip("/")

    def _client(self) -> Any:
        import httpx

        return httpx.Client(base_url=self.address, timeout=30)

    def start(self, run: Run) -> str:
        payload = job_submission_payload(run, self.settings)
        with self._client() as client:
            response = client.post("/api/jobs/", json=payload)
            response.raise_for_status()
            return str(response.json().get("submission_id", payload["submission_id"]))

    def cancel(self, job_id: str) -> None:
        with self._client() as client:
            client.post(f"/api/jobs/{job_id}/stop").raise_for_status()

    def status(self, job_id: str) -> JobState:
        with self._client() as client:
            response = client.get(f"/api/jobs/{job_id}")
            if response.status_code == 404:
                return "unknown"
            response.raise_for_status()
            state = response.json().get("status", "")
        return "finished" if state in ("SUCCEEDED", "FAILED", "STOPPED") else "running"


class KubeRayLauncher:
    """A RayJob custom resource (built by facefleet.platform.kuberay) created with the kubernetes client."""

    name = "kuberay"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    def manifest(self, run: Run) -> dict[str, Any]:
        from facefleet.platform import kuberay

        return kuberay.build_rayjob_manifest(run.id, settings=self.settings)

    def start(self, run: Run) -> str:
        from facefleet.platform import kuberay

        manifest = self.manifest(run)
        kuberay.submit_rayjob(manifest, namespace=manifest["metadata"]["namespace"])
        return str(manifest["metadata"]["name"])

    def cancel(self, job_id: str) -> None:
        from facefleet.platform import kuberay

        kuberay.delete_rayjob(job_id, namespace=self.settings.kuberay_namespace)

    def status(self, job_id: str) -> JobState:
        from facefleet.platform import kuberay
        from facefleet.platform.errors import NotFoundError

        try:
            found = kuberay.get_rayjob_status(job_id, namespace=self.settings.kuberay_namespace)
        except NotFoundError:
            return "finished"
        return "finished" if found.finished else "running"


def get_launcher(name: str | None = None, settings: Settings | None = None) -> Launcher:
    settings = settings or get_settings()
    chosen = name or settings.launcher
    if chosen == "local":
        return LocalLauncher(settings)
    if chosen == "ray":
        return RayJobsLauncher(settings)
    if chosen == "kuberay":
        return KubeRayLauncher(settings)
    raise InvalidInputError(f"unknown launcher {chosen!r}; use local, ray or kuberay")
