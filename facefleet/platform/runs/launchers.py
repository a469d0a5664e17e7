"""Launchers start the worker entrypoint `python -m facefleet.workers.train --run ID` somewhere and stop it.

Whatever the launcher, the worker writes the run's status to the database; a launcher's own status is only
used to notice a job that died without saying so.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Protocol

from facefleet.platform.db.models import Run
from facefleet.platform.errors import FacefleetError, InvalidInputError
from facefleet.platform.runs.entrypoint import ENTRYPOINT_MODULE, entrypoint_args, entrypoint_command
from facefleet.platform.runs.failures import describe, settings_secrets
from facefleet.platform.runs.ray_jobs import FINISHED_STATES, RayJobsClient
from facefleet.platform.settings import Settings, get_settings

JobState = Literal["running", "finished", "unknown"]


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

    def failure(self, run: Run) -> str | None:
        """Why the run's finished job ended, from the launcher's side (bounded, redacted), if it knows."""

    def preflight(self) -> None:
        """Refuse (InvalidInputError) before a run is created when its job could not run facefleet."""


class LocalLauncher:
    """A child process in its own process group; the pid is the job id; logs in <data_dir>/runs/<id>.log."""

    name = "local"
    _children: dict[int, subprocess.Popen[bytes]] = {}

    def __init__(self, settings: Settings | None = None, *, module: str = ENTRYPOINT_MODULE) -> None:
        self.settings = settings or get_settings()
        self.module = module  # the entrypoint module the child runs

    def log_path(self, run_id: int) -> Path:
        return self.settings.data_dir.resolve() / "runs" / f"{run_id}.log"

    def start(self, run: Run) -> str:
        log_path = self.log_path(run.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker_environment(self.settings)}
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, *entrypoint_args(run.id, self.module)],
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
        if not job_id.isdigit():
            return "unknown"  # not a pid: not a job of this launcher
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

    def failure(self, run: Run) -> str | None:
        """The child's exit status (when it is our child) and the tail of its log file."""
        job_id = run.launcher_job_id or ""
        child = self._children.get(int(job_id)) if job_id.isdigit() else None
        code = child.poll() if child is not None else None
        if code is None:
            headline = f"worker process {job_id or '?'} is gone"
        elif code < 0:
            headline = f"worker process {job_id} was killed by {_signal_name(-code)}"
        else:
            headline = f"worker process {job_id} exited with code {code}"
        path = self.log_path(run.id)
        log = _read_tail(path) if path.is_file() else ""
        return describe(f"{headline} (log: {path})", log, secrets=settings_secrets(self.settings))

    def preflight(self) -> None:
        """Nothing to check: the worker runs with this very interpreter."""


def job_runtime_env(settings: Settings, *, worker_env: bool = True) -> dict[str, Any]:
    """FACEFLEET_RAY_RUNTIME_ENV merged with the worker's environment (ours wins on a clash)."""
    runtime_env = copy.deepcopy(settings.ray_runtime_env or {})
    env_vars = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    if worker_env:
        env_vars.update(worker_environment(settings))
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env


def job_submission_payload(run: Run, settings: Settings) -> dict[str, Any]:
    """The body of POST /api/jobs/ (Ray Jobs REST API) for a run."""
    return {
        "entrypoint": entrypoint_command(run.id),
        "submission_id": f"facefleet-run-{run.id}-{os.urandom(3).hex()}",
        "runtime_env": job_runtime_env(settings),
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
        token = self.settings.ray_auth_token
        self.client = RayJobsClient(
            self.address,
            token=token.get_secret_value() if token else None,
            secrets=settings_secrets(self.settings),
        )

    def start(self, run: Run) -> str:
        return self.client.submit(job_submission_payload(run, self.settings))

    def cancel(self, job_id: str) -> None:
        self.client.stop(job_id)

    def status(self, job_id: str) -> JobState:
        info = self.client.info(job_id)
        if info is None:
            return "unknown"
        return "finished" if info.get("status") in FINISHED_STATES else "running"

    def failure(self, run: Run) -> str | None:
        """The job's status and message, and the tail of its driver log."""
        job_id = run.launcher_job_id
        if not job_id:
            return None
        info = self.client.info(job_id)
        if info is None:
            return f"Ray job {job_id} is unknown to the cluster at {self.address} (was the head restarted?)"
        message = str(info.get("message") or "")
        headline, _, rest = message.partition("\n")  # a failed entrypoint's message embeds its logs
        headline = headline.split(", last available logs")[0]
        try:
            log = self.client.logs(job_id) or rest
        except FacefleetError:
            log = rest
        return describe(
            f"Ray job {job_id} {info.get('status')}: {headline}", log, secrets=settings_secrets(self.settings)
        )

    def preflight(self) -> None:
        if not self.settings.ray_preflight:
            return
        from facefleet.platform.runs import ray_preflight

        ray_preflight.check_cluster(
            self.client,
            job_runtime_env(self.settings, worker_env=False) or None,
            secrets=settings_secrets(self.settings),
        )


class KubeRayLauncher:
    """A RayJob custom resource (built by platform.runs.kuberay) created with the kubernetes client."""

    name = "kuberay"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    def manifest(self, run: Run) -> dict[str, Any]:
        from facefleet.platform.runs import kuberay

        return kuberay.build_rayjob_manifest(run.id, settings=self.settings)

    def start(self, run: Run) -> str:
        from facefleet.platform.runs import kuberay

        manifest = self.manifest(run)
        kuberay.submit_rayjob(manifest, namespace=manifest["metadata"]["namespace"])
        return str(manifest["metadata"]["name"])

    def cancel(self, job_id: str) -> None:
        from facefleet.platform.runs import kuberay

        kuberay.delete_rayjob(job_id, namespace=self.settings.kuberay_namespace)

    def status(self, job_id: str) -> JobState:
        from facefleet.platform.errors import NotFoundError
        from facefleet.platform.runs import kuberay

        try:
            found = kuberay.get_rayjob_status(job_id, namespace=self.settings.kuberay_namespace)
        except NotFoundError:
            return "finished"
        return "finished" if found.finished else "running"

    def failure(self, run: Run) -> str | None:
        """What KubeRay says about the RayJob (job status, deployment status, reason, message)."""
        from facefleet.platform.errors import NotFoundError
        from facefleet.platform.runs import kuberay

        name, namespace = run.launcher_job_id, self.settings.kuberay_namespace
        if not name:
            return None
        try:
            found = kuberay.get_rayjob_status(name, namespace=namespace)
        except NotFoundError:
            return f"RayJob {name} no longer exists in namespace {namespace}"
        return describe(kuberay.describe_status(found), secrets=settings_secrets(self.settings))

    def preflight(self) -> None:
        """Nothing to check here: the RayJob's pods run the facefleet image itself."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_tail(path: Path, limit: int = 64 * 1024) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", errors="replace")


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
