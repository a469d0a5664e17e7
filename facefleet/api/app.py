"""The FastAPI application: routers under /v1, problem-JSON errors, Prometheus metrics, no key on health."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy import Engine

from facefleet import __version__
from facefleet.api.admission import AdmissionMiddleware, pool_capacity
from facefleet.api.deps import PrincipalCache
from facefleet.api.device_fastpath import DeviceFastPath
from facefleet.api.errors import install_error_handlers
from facefleet.api.metrics import ApiMetrics, DatabaseCollector, PrometheusMiddleware
from facefleet.api.routes import (
    audit,
    datasets,
    deployments,
    device_attempts,
    devices,
    health,
    inspections,
    keys,
    models,
    policies,
    runs,
    terminal_api,
)
from facefleet.api.routes.run_overlaps import router as run_overlaps_router
from facefleet.platform.db.session import engine_for, session_factory
from facefleet.platform.deployments.assignment import AssignedModelCache
from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store import ObjectStore, get_store
from facefleet.ui.app import install_console

log = logging.getLogger("facefleet.api")


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
    # The same pool without BEGIN/COMMIT, for the terminals' single-statement requests (poll, heartbeat).
    # SQLite's driver starts no transaction for a SELECT anyway, and switching modes costs a PRAGMA.
    app.state.autocommit_engine = (
        engine.execution_options(isolation_level="AUTOCOMMIT")
        if engine.dialect.name == "postgresql"
        else engine
    )
    app.state.store = store or get_store(settings)
    app.state.metrics = ApiMetrics()
    app.state.principal_cache = PrincipalCache()
    app.state.assigned_models = AssignedModelCache()
    app.state.metrics.registry.register(DatabaseCollector(app.state.session_factory))
    install_error_handlers(app)
    # Routes are matched in the order they were added, one router after another: the terminals' routes
    # (~500 requests/s at 10,000 terminals) and the device list come first, the console's pages last.
    for module in (terminal_api, device_attempts, devices, health, keys, audit, datasets, runs, models):
        app.include_router(module.router)
    for module in (policies, deployments):
        app.include_router(module.router)
    app.include_router(run_overlaps_router)
    for router in (inspections.router, inspections.sets_router, inspections.collection_router):
        app.include_router(router)
    install_console(app)  # after the API's handlers: it wraps them to answer HTML under /ui
    # Innermost: the terminals' hot routes answered without FastAPI's routing (admission still applies).
    app.add_middleware(DeviceFastPath)
    # Added last = outermost: latencies include the time a request waits for admission.
    app.add_middleware(
        AdmissionMiddleware,
        limit=pool_capacity(engine),
        max_queue=settings.api_max_queue,
        max_wait=settings.api_max_wait_seconds,
    )
    app.add_middleware(PrometheusMiddleware, metrics=app.state.metrics)
    return app
