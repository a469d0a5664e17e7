"""/v1/models: models, versions, aliases, streamed artifact downloads and promotion to production."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from facefleet.api.action_routes import add_action_route
from facefleet.api.deps import Admin, DbSession, Store, Viewer, read_snapshot
from facefleet.api.errors import ERROR_RESPONSES
from facefleet.api.pagination import Page, Pagination, make_page, slice_page
from facefleet.api.responses import model_response
from facefleet.api.schemas import AliasUpdate, StrictBody
from facefleet.platform.errors import NotFoundError
from facefleet.platform.models import service as registry
from facefleet.platform.models.schemas import ModelSummary, ModelVersionView

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


class AliasMap(BaseModel):
    name: str
    aliases: dict[str, int]


@router.get("", response_model=Page[ModelSummary])
async def list_models(request: Request, _principal: Viewer, page: Pagination) -> Response:
    rows, total = slice_page(await read_snapshot(request, registry.list_models), page)
    return model_response(make_page(rows, total, page, lambda m: m))


@router.get("/{name}/versions", response_model=Page[ModelVersionView])
def list_model_versions(
    name: str, session: DbSession, _principal: Viewer, page: Pagination, alias: str | None = None
) -> Page[ModelVersionView]:
    views = registry.version_views(session, registry.list_versions(session, name))
    if alias:
        views = [view for view in views if alias in view.aliases]
    rows, total = slice_page(views, page)
    return make_page(rows, total, page, lambda view: view)


@router.get("/{name}/versions/{version}", response_model=ModelVersionView)
def get_model_version(name: str, version: str, session: DbSession, _principal: Viewer) -> ModelVersionView:
    """``version`` is a number, an alias (``production``) or ``latest``."""
    return registry.version_view(session, registry.get_model_version(session, name, version))


@router.get(
    "/{name}/versions/{version}/artifacts/{file_name}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    name: str, version: str, file_name: str, session: DbSession, store: Store, _principal: Viewer
) -> StreamingResponse:
    """Stream an artifact from the store; ``X-Checksum-SHA256`` lets the client verify it."""
    model = registry.get_model_version(session, name, version)
    info = (model.artifacts or {}).get(file_name)
    if info is None:
        raise NotFoundError(
            f"{name} v{model.version} has no artifact {file_name!r}; it has "
            f"{', '.join(sorted(model.artifacts or {})) or 'none'}",
            field="file_name",
        )
    key = str(info["key"])
    headers = {
        "Content-Disposition": f'attachment; filename="{file_name}"',
        "X-Checksum-SHA256": str(info.get("sha256", "")),
        "Content-Length": str(store.size(key)),
    }
    media = "application/json" if file_name.endswith(".json") else "application/octet-stream"
    return StreamingResponse(store.iter_chunks(key), media_type=media, headers=headers)


@router.get("/{name}/aliases", response_model=AliasMap)
def list_aliases(name: str, session: DbSession, _principal: Viewer) -> AliasMap:
    for summary in registry.list_models(session):
        if summary.name == name:
            return AliasMap(name=name, aliases=summary.aliases)
    raise NotFoundError(f"no model named {name!r}; list models with GET /v1/models", field="name")


@router.put("/{name}/aliases/{alias}", response_model=ModelVersionView)
def set_alias(
    name: str, alias: str, body: AliasUpdate, session: DbSession, principal: Admin
) -> ModelVersionView:
    """Point an alias at a version; moving ``production`` is a promotion (and notifies)."""
    return registry.move_alias_audited(session, name, alias, body.version, actor=principal.actor)


class PromoteRequest(StrictBody):
    alias: str = Field(registry.PRODUCTION, description="the alias to move (default production)")


def _promote(
    name: str,
    version: str,
    session: DbSession,
    principal: Admin,
    body: Annotated[PromoteRequest | None, Body()] = None,
) -> ModelVersionView:
    alias = body.alias if body else registry.PRODUCTION
    return registry.move_alias_audited(session, name, alias, version, actor=principal.actor)


add_action_route(
    router,
    "/{name}/versions/{version}",
    "promote",
    _promote,
    name="promote_model_version",
    response_model=ModelVersionView,
    summary="Promote a version (to production unless another alias is given)",
)
