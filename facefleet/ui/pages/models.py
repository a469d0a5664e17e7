"""Console pages for the model registry: models, one model's versions (evaluation, aliases), promotion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Path
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from facefleet.api.deps import DbSession
from facefleet.platform.db.models import AuditEvent
from facefleet.platform.errors import FacefleetError, NotFoundError
from facefleet.platform.models import service as registry
from facefleet.ui.web import ConsoleUser, ConsoleWriter, back

router = APIRouter(prefix="/ui/models", include_in_schema=False)
ModelName = Annotated[str, Path(min_length=1, max_length=128)]
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"


def evaluation_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """``{set: {mode: {accuracy, auc, ...}}}`` as rows ``{set, mode, accuracy, auc, eer, tar_at_far_1e3}``."""
    rows = []
    for set_name, modes in sorted((summary or {}).items()):
        if not isinstance(modes, dict):
            continue
        for mode, metrics in sorted(modes.items()):
            if isinstance(metrics, dict):
                rows.append({"set": set_name, "mode": mode, **metrics})
    return rows


@router.get("", response_class=HTMLResponse)
def models_page(console: ConsoleUser, session: DbSession) -> HTMLResponse:
    return console.render("models.html", title="Models", nav="models", models=registry.list_models(session))


def declined_promotions(session: DbSession, name: str, limit: int = 20) -> list[AuditEvent]:
    """Auto-promote decisions that left production alone, newest first (recorded by the scheduler)."""
    query = (
        select(AuditEvent)
        .where(AuditEvent.action == "models.promote_declined", AuditEvent.target_id.startswith(f"{name}:"))
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


@router.get("/{name}", response_class=HTMLResponse)
def model_page(name: ModelName, console: ConsoleUser, session: DbSession) -> HTMLResponse:
    versions = registry.version_views(session, registry.list_versions(session, name))
    if not versions:
        raise NotFoundError(f"no model named {name!r}; the models page lists them")
    versions.sort(key=lambda view: view.version, reverse=True)
    return console.render(
        "model.html",
        title=f"Model {name}",
        nav="models",
        name=name,
        versions=versions,
        evaluations={view.version: evaluation_rows(view.eval_summary) for view in versions},
        declined=declined_promotions(session, name),
        alias_pattern=ALIAS_PATTERN,
    )


@router.post("/{name}/versions/{version}/promote")
def promote(
    name: ModelName,
    version: Annotated[int, Path(ge=1, le=2_000_000_000)],
    console: ConsoleWriter,
    session: DbSession,
    alias: Annotated[str, Form(pattern=ALIAS_PATTERN)] = registry.PRODUCTION,
) -> Response:
    try:
        registry.move_alias_audited(session, name, alias, version, actor=console.principal.actor)
    except FacefleetError as exc:
        session.rollback()
        return back(f"/ui/models/{name}", error=exc.message)
    return back(f"/ui/models/{name}", notice=f"{name} v{version} is now {alias}")
