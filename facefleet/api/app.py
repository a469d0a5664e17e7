"""The FastAPI application: routers under /v1, problem-JSON errors, Prometheus metrics, no key on health."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine

from facefleet import __version__
from facefleet.api.admission import AdmissionMiddleware, pool_capacity
from facefleet.api.errors import install_error_handlers
from facefleet.api.metrics import ApiMetrics, DatabaseCollector, PrometheusMiddleware
from facefleet.api.routes import audit, health, keys
from facefleet.platform.db.session import engine_for, session_factory
from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store import ObjectStore, get_store

log = logging.getLogger("facefleet.api")

# Domain routers; each module exports `router`.
ROUTER_MODULES = (
    "facefleet.api.routes.datasets",
    "facefleet.api.routes.runs",
    "facefleet.api.routes.models",
    "facefleet.api.routes.policies",
    "facefleet.api.routes.devices",
    "facefleet.api.routes.deployments",
    "facefleet.api.routes.device",
)


def _import_router(name: str) -> APIRouter:
    module: ModuleType = importlib.import_module(name)
    router: APIRouter = module.router
    return router


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, store: ObjectStore | None = None
) -> FastAPI:
    """Build the app; nothing connects until the first request (migrations are `facefleet serve`'s job)."""
    settings = settings or get_settings()
    engine = engine or engine_for(settings.effective_database_url)
    app = FastAPI(
        title="facefleet",
        version=__version__,
        description="Train face-recognition models on many datasets at once and ship them to terminals. "
        "Authenticate with `Authorization: Bearer <API key>`.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    app.state.store = store or get_store(settings)
    app.state.metrics = ApiMetrics()
    app.state.metrics.registry.register(DatabaseCollector(app.state.session_factory))
    install_error_handlers(app)
    # Added last = outermost: latencies include the time a request waits for admission.
    app.add_middleware(AdmissionMiddleware, limit=pool_capacity(engine))
    app.add_middleware(PrometheusMiddleware, metrics=app.state.metrics)
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(audit.router)
    for name in ROUTER_MODULES:
        app.include_router(_import_router(name))
    return app
