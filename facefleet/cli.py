"""The `facefleet` command: thin, it calls services (or the REST API with --server)."""

from __future__ import annotations

import logging

import typer
from rich.table import Table

from facefleet import __version__
from facefleet.commands import (
    datasets,
    db,
    deployments,
    devices,
    inspections,
    keys,
    models,
    policies,
    runs,
    server,
    terminal,
)
from facefleet.commands._output import make_console
from facefleet.platform.settings import get_settings

app = typer.Typer(
    help="facefleet: train face models on many datasets and ship them to terminals.", no_args_is_help=True
)
app.add_typer(db.app, name="db")
app.add_typer(datasets.app, name="datasets")
app.add_typer(runs.app, name="runs")
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(devices.app, name="devices")
app.add_typer(deployments.app, name="deployments")
app.add_typer(policies.app, name="policies")
app.add_typer(inspections.app, name="inspections")
app.add_typer(terminal.app, name="terminal")
app.command("serve")(server.serve)
app.command("scheduler")(server.scheduler)
console = make_console()


@app.callback()
def _main() -> None:
    logging.basicConfig(
        level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # one INFO line per HTTP request / migration step drowns the commands' own output
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command()
def version() -> None:
    """Print the facefleet version."""
    console.print(f"facefleet {__version__}")


@app.command()
def config() -> None:
    """Print the effective settings (secrets masked)."""
    table = Table("setting", "environment variable", "value")
    for name, value in get_settings().masked().items():
        table.add_row(name, f"FACEFLEET_{name.upper()}", value)
    console.print(table)


@app.command()
def demo(
    steps: int = typer.Option(0, help="Training steps per run (0: the demo's default)."),
) -> None:
    """Run the main job end to end on the embedded defaults: synthetic data, train, evaluate, deploy."""
    from facefleet.demo import run_demo

    run_demo(steps=steps or None)


if __name__ == "__main__":
    app()
