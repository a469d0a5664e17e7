"""HTTP client for the /v1/device endpoints (httpx; a transport can be injected for tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx


class DeviceApiError(Exception):
    """The platform refused a request; ``status`` is the HTTP status, ``detail`` its message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return self.status >= 500 or self.status == 429


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text
    raise DeviceApiError(response.status_code, detail)


class DeviceClient:
    def __init__(
        self,
        server_url: str,
        *,
        credential: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self.http = httpx.Client(
            base_url=server_url.rstrip("/"), headers=headers, transport=transport, timeout=timeout
        )
        self._assignment: dict[str, Any] | None = None
        self._assignment_etag: str | None = None

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.request(method, path, json=body)
        _raise_for_problem(response)
        data: dict[str, Any] = response.json()
        return data

    def enroll(self, token: str) -> dict[str, Any]:
        return self._json("POST", "/v1/device/enroll", {"token": token})

    def assignment(self) -> dict[str, Any]:
        """The current assignment; an unchanged one costs the server a 304 (``If-None-Match``)."""
        headers = {"If-None-Match": self._assignment_etag} if self._assignment_etag else {}
        response = self.http.get("/v1/device/assignment", headers=headers)
        if response.status_code == 304 and self._assignment is not None:
            return self._assignment
        _raise_for_problem(response)
        return self._remember(response)

    def report(self, deployment_id: int, status: str, message: str = "") -> dict[str, Any]:
        response = self.http.post(
            "/v1/device/status",
            json={"deployment_id": deployment_id, "status": status, "message": message[:2000]},
        )
        _raise_for_problem(response)
        return self._remember(response)

    def _remember(self, response: httpx.Response) -> dict[str, Any]:
        data: dict[str, Any] = response.json()
        self._assignment, self._assignment_etag = data, response.headers.get("ETag")
        return data

    def heartbeat(
        self, agent_version: str, model_version_id: int | None, health: dict[str, Any]
    ) -> dict[str, Any]:
        return self._json(
            "POST",
            "/v1/device/heartbeat",
            {"agent_version": agent_version, "model_version_id": model_version_id, "health": health},
        )

    def upload_attempt(self, body: dict[str, Any]) -> dict[str, Any]:
        """One verification attempt for inspection (``facefleet.terminal.collection.attempt_body``)."""
        return self._json("POST", "/v1/device/attempts", body)

    def download(self, url: str, part: Path, size: int) -> None:
        """Fetch ``url`` into ``part``, resuming from what is already there (``Range: bytes=N-``)."""
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:  # not ours any more: start over
            part.unlink()
            offset = 0
        if offset == size:
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self.http.stream("GET", url, headers=headers) as response:
            if not response.is_success:
                response.read()
                _raise_for_problem(response)
            mode = "ab" if response.status_code == 206 else "wb"  # 200: the server sent it whole
            with open(part, mode) as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
