"""A small client of the Ray Jobs REST API (the head's dashboard, e.g. http://ray-head:8265).

Plain HTTP keeps the control plane free of a Ray import. Every failure becomes a FacefleetError whose message
says what to check: an unreachable head, a head with token auth, a refused submission.
"""

from __future__ import annotations

from typing import Any

import httpx

from facefleet.platform.errors import FacefleetError
from facefleet.platform.runs.failures import redact

FINISHED_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


class RayJobsClient:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 15.0,
        secrets: list[str] | None = None,
    ) -> None:
        self.address = address.rstrip("/")
        self.secrets = secrets or []  # masked in refusals (Ray may echo the runtime_env's env_vars)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            with httpx.Client(base_url=self.address, timeout=self.timeout, headers=self.headers) as client:
                response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FacefleetError(
                f"could not reach the Ray Jobs API at {self.address} ({type(exc).__name__}: {exc}); check "
                "FACEFLEET_RAY_ADDRESS and that the Ray head runs with its dashboard (port 8265 by default)",
                status_code=503,
            ) from exc
        if response.status_code in (401, 403):
            raise FacefleetError(
                f"the Ray Jobs API at {self.address} refused the request (HTTP {response.status_code}): the "
                "head has token authentication on; set FACEFLEET_RAY_AUTH_TOKEN to its token (`ray "
                "get-auth-token` on the head), or start the head with RAY_AUTH_MODE=disabled on a private "
                "network",
                status_code=502,
            )
        return response

    def _checked(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 400:
            raise FacefleetError(
                f"the Ray Jobs API at {self.address} refused to {what} (HTTP {response.status_code}): "
                f"{redact(response.text.strip()[-2000:], self.secrets)[-1000:]}",
                status_code=502,
            )
        return response

    def submit(self, payload: dict[str, Any]) -> str:
        response = self._checked(self._request("POST", "/api/jobs/", json=payload), "submit the job")
        return str(response.json().get("submission_id") or payload["submission_id"])

    def stop(self, job_id: str) -> None:
        response = self._request("POST", f"/api/jobs/{job_id}/stop")
        if response.status_code != 404:
            self._checked(response, f"stop job {job_id}")

    def info(self, job_id: str) -> dict[str, Any] | None:
        """The job's JobDetails (status, message, driver_exit_code, ...); None when Ray does not know it."""
        response = self._request("GET", f"/api/jobs/{job_id}")
        if response.status_code == 404:
            return None
        return dict(self._checked(response, f"read job {job_id}").json())

    def logs(self, job_id: str) -> str:
        response = self._request("GET", f"/api/jobs/{job_id}/logs")
        if response.status_code == 404:
            return ""
        return str(self._checked(response, f"read the logs of job {job_id}").json().get("logs") or "")
