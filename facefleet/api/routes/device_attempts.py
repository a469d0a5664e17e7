"""POST /v1/device/attempts: a terminal uploads one verification attempt for inspection (device credential).

The body is read with a cap before it is parsed, so an oversized upload is a 413 without buffering it all.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from facefleet.api.deps import DbSession, Store
from facefleet.api.device_auth import DeviceToken
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.responses import model_response
from facefleet.platform.devices import service as devices
from facefleet.platform.errors import InvalidInputError, PayloadTooLargeError
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import AttemptReceipt, AttemptUpload

router = APIRouter(prefix="/v1/device", tags=["device"], responses=ERROR_RESPONSES)


@router.post(
    "/attempts",
    response_model=AttemptReceipt,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": AttemptUpload.model_json_schema()}},
        }
    },
    responses={
        413: {"description": "Over FACEFLEET_ATTEMPT_MAX_BYTES"},
        429: {"description": "Over FACEFLEET_ATTEMPT_RATE_PER_HOUR"},
    },
)
async def upload_attempt(request: Request, session: DbSession, store: Store, token: DeviceToken) -> Response:
    """Store one attempt when the group's collection is on; 4xx and nothing stored otherwise."""
    settings = request.app.state.settings
    device = await run_in_threadpool(devices.authenticate_device, session, token)  # 401/403 before reading
    raw = await _capped_body(request, settings.attempt_max_bytes)

    def record() -> AttemptReceipt:
        try:
            body = AttemptUpload.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidInputError(f"{where}: {first['msg']}", field=where) from None
        attempt = inspections.record_attempt(
            session,
            store,
            device,
            body,
            max_bytes=settings.attempt_max_bytes,
            rate_per_hour=settings.attempt_rate_per_hour,
        )
        return AttemptReceipt(id=attempt.id, expires_at=attempt.expires_at)

    receipt = await run_in_threadpool(record)
    return model_response(receipt, status_code=201)


async def _capped_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"an attempt may be at most {limit} bytes; send smaller crops")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"an attempt may be at most {limit} bytes; send smaller crops")
        chunks.append(chunk)
    return b"".join(chunks)
