"""/v1/device: the terminal's own endpoints (device credential only): enroll, assignment, status, files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from facefleet.api.deps import DbSession, Store
from facefleet.api.device_auth import CurrentDevice
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.platform import audit
from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.deployments import assignment
from facefleet.platform.deployments import service as deployments
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


@router.get("/assignment", response_model=AssignmentRead)
def get_assignment(session: DbSession, device: CurrentDevice, store: Store) -> AssignmentRead:
    return assignment.device_assignment(session, device, store=store)


@router.post("/status", response_model=AssignmentRead)
def report_status(
    body: StatusReport, session: DbSession, device: CurrentDevice, store: Store
) -> AssignmentRead:
    """Record progress; the answer is the (possibly changed) assignment."""
    deployments.report_device_status(
        session, device, deployment_id=body.deployment_id, status=body.status, message=body.message
    )
    return assignment.device_assignment(session, device, store=store)


@router.post("/heartbeat", response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatRequest, session: DbSession, device: CurrentDevice) -> HeartbeatResponse:
    devices.record_heartbeat(
        session,
        device,
        agent_version=body.agent_version,
        model_version_id=body.model_version_id,
        health=body.health,
    )
    return HeartbeatResponse(
        device_id=device.id, status=device.status, adaptation_enabled=device.adaptation_enabled
    )


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
