"""An HTTP client for the facefleet API, used by the CLI in remote mode (--server URL, FACEFLEET_API_KEY)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from facefleet.platform.errors import (
    AuthenticationError,
    ConflictError,
    FacefleetError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from facefleet.platform.settings import get_settings

_ERRORS: dict[int, type[FacefleetError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidInputError,
}
# Registering validates the whole dataset inside the request, which can take far longer than a read.
SLOW_REQUEST_TIMEOUT = httpx.Timeout(60.0, read=3600.0)
UploadProgress = Callable[[int, int], None]


class _ProgressFile(io.FileIO):
    """A file that reports how far httpx has read it (bytes sent so far, total) while it streams."""

    def __init__(self, path: Path, progress: UploadProgress) -> None:
        super().__init__(path, "rb")
        self._progress = progress
        self._total = path.stat().st_size

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._progress(self.tell(), self._total)
        return chunk


class FacefleetClient:
    """Synchronous, one request per method; problem responses become FacefleetError with their detail."""

    def __init__(
        self,
        server: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(
            base_url=server.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FacefleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FacefleetError(
                f"cannot reach the facefleet server at {self.http.base_url}: {exc}", status_code=503
            ) from exc
        raise_for_problem(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(
        self, path: str, body: dict[str, Any] | None = None, *, timeout: httpx.Timeout | None = None
    ) -> Any:
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        response = self.request("POST", path, json=body, **extra)
        return response.json() if response.content else None

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", path, json=body).json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, json=body).json()

    def delete(self, path: str) -> Any:
        response = self.request("DELETE", path)
        return response.json() if response.content else None

    def iter_pages(
        self, path: str, page_size: int = 200, *, max_items: int | None = None, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list (or the first ``max_items``)."""
        offset = 0
        while max_items is None or offset < max_items:
            limit = page_size if max_items is None else min(page_size, max_items - offset)
            page = self.get(path, limit=limit, offset=offset, **params)
            yield from page["items"]
            offset += len(page["items"])
            total = page.get("total")  # null past the server's count cap: page until a short page
            if len(page["items"]) < limit or (total is not None and offset >= total):
                return

    def upload_dataset(
        self,
        archive: Path,
        *,
        name: str,
        kind: str = "train",
        tags: list[str] | None = None,
        description: str = "",
        min_images_per_identity: int = 1,
        progress: UploadProgress | None = None,
        align: bool = False,
        aligner: str = "mtcnn",
    ) -> Any:
        """Stream ``archive`` to the server, which validates and registers it (a dataset version dict)."""
        form = {
            "name": name,
            "kind": kind,
            "tags": ",".join(tags or []),
            "description": description,
            "min_images_per_identity": str(min_images_per_identity),
            "align": "true" if align else "false",
            "aligner": aligner,
        }
        handle = _ProgressFile(archive, progress) if progress else open(archive, "rb")  # noqa: SIM115
        with handle:
            response = self.request(
                "POST",
                "/v1/datasets/upload",
                files={"file": (archive.name, handle)},
                data=form,
                timeout=SLOW_REQUEST_TIMEOUT,
            )
        return response.json()

    def download(self, path: str, target: Path) -> Path:
        """Stream a file (e.g. a model artifact) to ``target`` without holding it in memory."""
        tmp = target.with_name(target.name + ".part")
        with self.http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                raise_for_problem(response)
            with open(tmp, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        tmp.replace(target)
        return target


def raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail, field = str(body.get("detail", response.text)), body.get("field")
    except ValueError:
        detail, field = response.text or response.reason_phrase, None
    error_type = _ERRORS.get(response.status_code, FacefleetError)
    raise error_type(detail, field=field, status_code=response.status_code)


def remote_client(server: str | None = None, api_key: str | None = None) -> FacefleetClient | None:
    """A client when a server is named (option or FACEFLEET_SERVER_URL), else None (local mode)."""
    settings = get_settings()
    server = server or settings.server_url
    if not server:
        return None
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise AuthenticationError(
            "remote mode needs an API key: set FACEFLEET_API_KEY", field="FACEFLEET_API_KEY"
        )
    return FacefleetClient(server, key)
