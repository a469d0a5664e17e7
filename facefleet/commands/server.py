"""`facefleet serve` (the API, migrations first) and `facefleet scheduler` (the retraining loop)."""

from __future__ import annotations

import inspect
import logging
import signal
import threading
from typing import Annotated

import typer

log = logging.getLogger("facefleet.server")


def _migrate() -> None:
    from facefleet.platform.db import migrate
    from facefleet.platform.settings import get_settings

    migrate.upgrade(get_settings().effective_database_url)


def serve(
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(help="worker processes (default: FACEFLEET_API_WORKERS); each has its own DB pool"),
    ] = None,
    migrate: Annotated[bool, typer.Option(help="run database migrations before serving")] = True,
    access_log: Annotated[bool, typer.Option(help="log every request")] = True,
) -> None:
    """Run the REST API (uvicorn); the schema is migrated to the latest version first."""
    import uvicorn

    from facefleet.platform.settings import get_settings

    if migrate:
        _migrate()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(
        f"facefleet API on http://{shown}:{port} - web console http://{shown}:{port}/ui, "
        f"REST docs http://{shown}:{port}/docs"
    )
    options: dict[str, object] = {}
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
        # A worker answers the supervisor's ping only once it has imported the app, which takes several
        # seconds on a busy machine: uvicorn's 5 s default killed and restarted workers in a loop.
        options["timeout_worker_healthcheck"] = 60
    uvicorn.run(
        "facefleet.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers or get_settings().api_workers,
        access_log=access_log,
        log_level="info",
        **options,  # type: ignore[arg-type]
    )


def scheduler(
    interval: Annotated[float, typer.Option(help="seconds between ticks")] = 5.0,
    once: Annotated[bool, typer.Option(help="run one tick and exit (cron-style deployments, tests)")] = False,
    migrate: Annotated[bool, typer.Option(help="run database migrations first")] = True,
) -> None:
    """Run the retraining scheduler: triggers -> runs, follows runs, auto-promotes, sends notifications."""
    from facefleet.platform.db.session import get_engine
    from facefleet.platform.scheduler import Scheduler
    from facefleet.workers.monitor import evaluate_model_version

    if migrate:
        _migrate()
    # Metric-drop checks re-run the production model's ONNX graph on the latest verification data.
    sched = Scheduler(get_engine(), evaluate=evaluate_model_version)
    if once:
        typer.echo(str(sched.tick()))
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())  # finish the current tick, then exit
    sched.run_forever(interval=interval, stop=stop)
