"""/v1/devices: register terminals (one-time enrollment token), list, inspect, disable. Admin only."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response, status

from facefleet.api.deps import Admin, DbSession, read_only
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import KeysetPagination, Page, make_page
from facefleet.api.params import PathId
from facefleet.api.responses import model_response
from facefleet.platform.devices import service as devices
from facefleet.platform.devices.schemas import DeviceCreate, DeviceRead, DeviceRegistered

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)


@router.post("", response_model=DeviceRegistered, status_code=status.HTTP_201_CREATED)
def register_device(body: DeviceCreate, session: DbSession, principal: Admin) -> DeviceRegistered:
    return devices.register_device_audited(session, body, actor=principal.actor)


@router.get("", response_model=Page[DeviceRead])
async def list_devices(
    request: Request,
    _admin: Admin,
    page: KeysetPagination,
    group: str | None = Query(default=None, description="only this group"),
) -> Response:
    rows, total = await read_only(
        request,
        devices.list_device_views,
        group=group,
        limit=page.limit,
        offset=page.offset,
        after=page.after,
    )
    return model_response(make_page(rows, total, page, lambda view: view, key=lambda d: d.id))


@router.get("/{device_id}", response_model=DeviceRead)
def get_device(device_id: PathId, session: DbSession, _admin: Admin) -> Response:
    return model_response(DeviceRead.model_validate(devices.get_device(session, device_id=device_id)))


@router.post("/{device_id}/disable", response_model=DeviceRead)
def disable_device(device_id: PathId, session: DbSession, principal: Admin) -> DeviceRead:
    return devices.disable_device_audited(session, device_id, actor=principal.actor)


@router.post("/{device_id}/enrollment-token", response_model=DeviceRegistered)
def reissue_token(device_id: PathId, session: DbSession, principal: Admin) -> DeviceRegistered:
    return devices.reissue_enrollment_token_audited(session, device_id, actor=principal.actor)
