"""Liveness, readiness and Prometheus metrics; these need no key."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from facefleet.api.schemas import HealthStatus

router = APIRouter(tags=["health"])
log = logging.getLogger("facefleet.api.health")


@router.get("/healthz", response_model=HealthStatus)
def healthz() -> HealthStatus:
    """The process is up and serving."""
    return HealthStatus(status="ok")


def _check_ready(request: Request) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        request.app.state.store.exists("healthz/probe")
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001
        log.warning("readiness: store unreachable: %s", exc)
        checks["store"] = f"unreachable: {type(exc).__name__}"
    return checks


@router.get("/readyz", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def readyz(request: Request) -> JSONResponse:
    """The database and the object store answer; 503 with the failing check otherwise."""
    checks = await asyncio.to_thread(_check_ready, request)
    ok = all(value == "ok" for value in checks.values())
    body = HealthStatus(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latencies, runs by status, queue depth."""
    data = await asyncio.to_thread(generate_latest, request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
