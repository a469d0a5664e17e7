"""`facefleet models ...`: list registered models, show a version, promote (move an alias)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from facefleet.platform.db.session import session_scope
from facefleet.platform.errors import FacefleetError
from facefleet.platform.models import registry

app = typer.Typer(help="Registered models: list, show, promote.", no_args_is_help=True)
console = Console()


def _fail(error: FacefleetError) -> None:
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


@app.command("list")
def list_(name: str | None = typer.Argument(None, help="Model name: list its versions.")) -> None:
    """List models, or the versions of model NAME."""
    try:
        with session_scope() as session:
            if name is None:
                table = Table("model", "latest version", "versions", "aliases")
                for summary in registry.list_models(session):
                    aliases = ", ".join(
                        f"{alias}=v{version}" for alias, version in sorted(summary.aliases.items())
                    )
                    table.add_row(summary.name, str(summary.latest_version), str(summary.versions), aliases)
            else:
                table = Table("version", "run", "aliases", "created", "card sha256")
                for model in registry.list_versions(session, name):
                    table.add_row(
                        str(model.version),
                        str(model.run_id or ""),
                        ", ".join(registry.aliases_of(session, model)),
                        model.created_at.strftime("%Y-%m-%d %H:%M"),
                        model.card_sha256[:16],
                    )
    except FacefleetError as error:
        _fail(error)
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(...), version: str = typer.Argument("latest", help="Number or alias.")
) -> None:
    """One model version: artifacts, aliases, evaluation summary."""
    try:
        with session_scope() as session:
            view = registry.version_view(session, registry.get_model_version(session, name, version))
    except FacefleetError as error:
        _fail(error)
    console.print(
        f"{view.name} v{view.version} (run {view.run_id}) aliases: {', '.join(view.aliases) or '-'}"
    )
    table = Table("artifact", "key", "sha256", "bytes")
    for file_name, info in view.artifacts.items():
        table.add_row(file_name, info["key"], info["sha256"], str(info["size"]))
    console.print(table)
    console.print_json(json.dumps(view.eval_summary))


@app.command("promote")
def promote(
    name: str = typer.Argument(...),
    version: str = typer.Argument(..., help="Number or alias."),
    alias: str = typer.Option("production", "--alias", help="Alias to move."),
) -> None:
    """Point ALIAS (default production) at VERSION of model NAME."""
    try:
        with session_scope() as session:
            target = registry.get_model_version(session, name, version)
            registry.set_alias(session, name, alias, target.version)
            number = target.version
    except FacefleetError as error:
        _fail(error)
    console.print(f"{name}: {alias} -> v{number}")
