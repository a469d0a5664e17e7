"""/v1/keys: create (the secret is shown once), list and revoke API keys. Admin only."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from facefleet.api.deps import Admin, DbSession
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import Page, Pagination, make_page
from facefleet.api.params import PathId
from facefleet.api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from facefleet.platform import auth

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


@router.post("", response_model=ApiKeyCreated, status_code=status.HTTP_201_CREATED)
def create_key(body: ApiKeyCreate, session: DbSession, principal: Admin) -> ApiKeyCreated:
    key, token = auth.create_api_key_audited(session, name=body.name, role=body.role, actor=principal.actor)
    return ApiKeyCreated(**ApiKeyRead.model_validate(key).model_dump(), key=token)


@router.get("", response_model=Page[ApiKeyRead])
def list_keys(
    session: DbSession, _principal: Admin, page: Pagination, include_revoked: bool = True
) -> Page[ApiKeyRead]:
    rows, total = auth.list_api_keys(
        session, limit=page.limit, offset=page.offset, include_revoked=include_revoked
    )
    return make_page(rows, total, page, ApiKeyRead.model_validate)


@router.delete("/{key_id}", response_model=ApiKeyRead)
def revoke_key(key_id: PathId, request: Request, session: DbSession, principal: Admin) -> ApiKeyRead:
    key = auth.revoke_api_key_audited(session, key_id=key_id, actor=principal.actor)
    request.app.state.principal_cache.clear()  # this process stops accepting the key at once
    return ApiKeyRead.model_validate(key)
