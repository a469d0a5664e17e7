"""/v1/device: the terminal's own endpoints (device credential only): enroll, assignment, status, files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from facefleet.api.deps import DbSession, Store
from facefleet.api.device_auth import CurrentDevice, device_credential
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.responses import model_response
from facefleet.platform import audit
from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.deployments import assignment, polling
from facefleet.platform.deployments.schemas import AssignmentRead, StatusReport
from facefleet.platform.devices import service as devices
from facefleet.platform.devices.schemas import (
    EnrollRequest,
    EnrollResponse,
    HeartbeatRequest,
    HeartbeatResponse,
)
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.signing import public_key_pem

router = APIRouter(prefix="/v1/device", tags=["device"], responses=ERROR_RESPONSES)
_RANGE = re.compile(r"^bytes=(\d+)-$")
CHUNK = 256 * 1024


@router.post("/enroll", response_model=EnrollResponse)
def enroll(body: EnrollRequest, request: Request, session: DbSession) -> EnrollResponse:
    """Exchange the one-time enrollment token for this terminal's credential and the signing key to pin."""
    device, credential = devices.enroll(session, body.token)
    # A credential was issued: security-relevant, so it is audited like an admin's change.
    audit.record(
        session,
        f"device:{device.id}:{device.name}",
        "devices.enroll",
        "device",
        device.id,
        {"group": device.group},
    )
    return EnrollResponse(
        device_id=device.id,
        name=device.name,
        group=device.group,
        credential=credential,
        public_key_pem=public_key_pem(request.app.state.settings),
        adaptation_enabled=device.adaptation_enabled,
    )


def _etag_matches(header: str, etag: str) -> bool:
    candidates = {part.strip().removeprefix("W/") for part in header.split(",")}
    return etag in candidates or "*" in candidates


@router.get(
    "/assignment",
    response_model=AssignmentRead,
    responses={304: {"description": "Unchanged since the ETag sent in If-None-Match (no body)."}},
)
async def get_assignment(
    request: Request,
    if_none_match: Annotated[
        str | None,
        Header(description="the ETag of the assignment the terminal has; unchanged -> 304", max_length=1024),
    ] = None,
) -> Response:
    """What this terminal should do now. Poll with ``If-None-Match``: an unchanged assignment is a 304."""
    return await assignment_answer(request.app.state, device_credential(request), if_none_match)


@router.post("/status", response_model=AssignmentRead)
async def report_status(body: StatusReport, request: Request) -> Response:
    """Record progress; the answer is the (possibly changed) assignment, with its ETag."""
    return await status_answer(request.app.state, device_credential(request), body)


@router.post("/heartbeat", response_model=HeartbeatResponse)
async def heartbeat(body: HeartbeatRequest, request: Request) -> Response:
    """Authenticate and record the heartbeat in one UPDATE (no read first, no transaction around it)."""
    return await heartbeat_answer(request.app.state, device_credential(request), body)


# The three answers above, shared with facefleet.api.device_fastpath (which calls them without FastAPI's
# routing and dependency solving). Each is one worker-thread hop around a few SQL statements.


async def assignment_answer(state: State, token: str, if_none_match: str | None) -> Response:
    answer = await run_in_threadpool(
        polling.poll,
        state.engine,
        state.autocommit_engine,
        token,
        lambda etag: if_none_match is not None and _etag_matches(if_none_match, etag),
        store=state.store,
        cache=state.assigned_models,
    )
    return _answer(answer)


async def status_answer(state: State, token: str, body: StatusReport) -> Response:
    answer = await run_in_threadpool(
        polling.report_status,
        state.engine,
        token,
        deployment_id=body.deployment_id,
        status=body.status,
        message=body.message,
        store=state.store,
        cache=state.assigned_models,
    )
    return _answer(answer)


async def heartbeat_answer(state: State, token: str, body: HeartbeatRequest) -> Response:
    device_id, device_status, adaptation = await run_in_threadpool(
        polling.heartbeat,
        state.autocommit_engine,
        token,
        agent_version=body.agent_version,
        model_version_id=body.model_version_id,
        health=body.health,
    )
    return model_response(
        HeartbeatResponse(device_id=device_id, status=device_status, adaptation_enabled=adaptation)
    )


def _answer(answer: polling.PollAnswer) -> Response:
    headers = {"ETag": answer.etag, "Cache-Control": "no-cache"}
    if answer.body is None:
        return Response(status_code=304, headers=headers)
    return model_response(answer.body, headers=headers)


@router.get("/artifacts/{file}", response_class=StreamingResponse)
def download_artifact(
    file: str,
    session: DbSession,
    device: CurrentDevice,
    store: Store,
    model_version_id: Annotated[
        int, Query(ge=1, le=DB_INT_MAX, description="the version named in this device's assignment")
    ],
    range_header: str | None = Header(default=None, alias="Range"),
) -> StreamingResponse:
    """Stream one artifact of the assigned version; ``Range: bytes=N-`` resumes an interrupted download."""
    location = assignment.artifact_for_device(session, device, file=file, model_version_id=model_version_id)
    offset = _parse_range(range_header, location.size)
    headers = {
        "ETag": f'"{location.sha256}"',
        "Accept-Ranges": "bytes",
        "Content-Length": str(location.size - offset),
    }
    status_code = 200
    if range_header is not None:
        status_code = 206
        headers["Content-Range"] = f"bytes {offset}-{location.size - 1}/{location.size}"
    stream = store.open_stream(location.key)
    return StreamingResponse(
        _chunks_from(stream, offset),
        status_code=status_code,
        headers=headers,
        media_type="application/octet-stream",
    )


def _parse_range(value: str | None, size: int) -> int:
    if value is None:
        return 0
    match = _RANGE.match(value.strip())
    if not match or int(match.group(1)) >= size:
        raise InvalidInputError(
            f"Range must be 'bytes=N-' with N below the size {size}", field="Range", status_code=416
        )
    return int(match.group(1))


def _chunks_from(stream: BinaryIO, offset: int) -> Iterator[bytes]:
    with stream:
        try:
            stream.seek(offset)
        except (OSError, AttributeError, ValueError):  # S3 bodies cannot seek: skip what the device has
            remaining = offset
            while remaining > 0:
                skipped = stream.read(min(CHUNK, remaining))
                if not skipped:
                    break
                remaining -= len(skipped)
        while chunk := stream.read(CHUNK):
            yield chunk
