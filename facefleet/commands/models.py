"""`facefleet models ...`: list registered models, show a version, promote (locally or against the API)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from facefleet.client import FacefleetClient
from facefleet.commands._complete import complete_model_names
from facefleet.commands._output import JsonOption, api_url, make_console, print_json, stored_location
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors, segment
from facefleet.platform.models import service as registry
from facefleet.platform.models.schemas import ModelSummary, ModelVersionView

app = typer.Typer(help="Registered models: list, show, promote.", no_args_is_help=True)
console = make_console()


@app.command("list")
def list_(
    name: str | None = typer.Argument(
        None, help="Model name: list its versions.", autocompletion=complete_model_names
    ),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List models, or the versions of model NAME."""
    with reported_errors(), connect(server) as client:
        rows: list[ModelSummary] | list[ModelVersionView]
        rows = _summaries(client) if name is None else _versions(client, name)
    if as_json:
        print_json(rows)
        return
    if name is None:
        console.print(_models_table(rows))  # type: ignore[arg-type]
    else:
        console.print(_versions_table(rows))  # type: ignore[arg-type]


def _summaries(client: FacefleetClient | None) -> list[ModelSummary]:
    if client is not None:
        return [ModelSummary.model_validate(item) for item in client.iter_pages("/v1/models")]
    with local_session() as session:
        return registry.list_models(session)


def _versions(client: FacefleetClient | None, name: str) -> list[ModelVersionView]:
    if client is not None:
        path = f"/v1/models/{segment(name)}/versions"
        return [ModelVersionView.model_validate(item) for item in client.iter_pages(path)]
    with local_session() as session:
        return registry.version_views(session, registry.list_versions(session, name))


def _models_table(summaries: list[ModelSummary]) -> Table:
    table = Table("model", "latest version", "versions", "aliases")
    for summary in summaries:
        aliases = ", ".join(f"{alias}=v{version}" for alias, version in sorted(summary.aliases.items()))
        table.add_row(summary.name, str(summary.latest_version), str(summary.versions), aliases)
    return table


def _versions_table(versions: list[ModelVersionView]) -> Table:
    table = Table("version", "run", "aliases", "created", "card sha256")
    for model in versions:
        table.add_row(
            str(model.version),
            str(model.run_id or ""),
            ", ".join(model.aliases),
            model.created_at.strftime("%Y-%m-%d %H:%M"),
            model.card_sha256[:16],
        )
    return table


@app.command("show")
def show(
    name: str = typer.Argument(..., autocompletion=complete_model_names),
    version: str = typer.Argument("latest", help="Number or alias."),
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """One model version: artifacts, aliases, evaluation summary, and why auto-promote declined."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            view = ModelVersionView.model_validate(
                client.get(f"/v1/models/{segment(name)}/versions/{segment(version)}")
            )
        else:
            with local_session() as session:
                view = registry.version_view(session, registry.get_model_version(session, name, version))
        declined = _declined(client, view)
        locations = {
            file_name: (
                api_url(
                    str(client.http.base_url),
                    f"/v1/models/{segment(view.name)}/versions/{view.version}/artifacts/{segment(file_name)}",
                )
                if client is not None
                else stored_location(str(info["key"]))
            )
            for file_name, info in view.artifacts.items()
        }
    if as_json:
        print_json({**view.model_dump(mode="json"), "promote_declined": declined})
        return
    console.print(
        f"{view.name} v{view.version} (run {view.run_id}) aliases: {', '.join(view.aliases) or '-'}"
    )
    table = Table("artifact", "download", "sha256", "bytes")
    for file_name, info in view.artifacts.items():
        table.add_row(file_name, locations[file_name], info["sha256"], str(info["size"]))
    console.print(table)
    console.print_json(json.dumps(view.eval_summary))
    for event in declined:
        console.print(f"auto-promote declined ({event['at']}, policy {event['policy']}): {event['reason']}")


def _declined(client: FacefleetClient | None, view: ModelVersionView) -> list[dict[str, object]]:
    """Why auto-promote left this version out of production (the scheduler's audit events)."""
    target = f"{view.name}:{view.version}"
    if client is not None:
        events = client.get(
            "/v1/audit", action="models.promote_declined", target_type="model", target_id=target, limit=20
        )["items"]
    else:
        from facefleet.platform import audit

        with local_session() as session:
            rows, _ = audit.list_events(
                session, limit=20, offset=0, action="models.promote_declined", target_id=target
            )
            events = [
                {"created_at": row.created_at.isoformat(), "details": dict(row.details or {})} for row in rows
            ]
    return [
        {
            "at": str(event["created_at"])[:19],
            "policy": event["details"].get("policy"),
            "run_id": event["details"].get("run_id"),
            "reason": event["details"].get("reason", ""),
        }
        for event in events
    ]


@app.command("promote")
def promote(
    name: str = typer.Argument(..., autocompletion=complete_model_names),
    version: str = typer.Argument(..., help="Number or alias."),
    alias: str = typer.Option("production", "--alias", help="Alias to move."),
    server: ServerOption = None,
) -> None:
    """Point ALIAS (default production) at VERSION of model NAME."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            path = f"/v1/models/{segment(name)}/versions/{segment(version)}:promote"
            number = ModelVersionView.model_validate(client.post(path, {"alias": alias})).version
        else:
            with local_session() as session:
                number = registry.move_alias_audited(session, name, alias, version, actor="cli").version
    console.print(f"{name}: {alias} -> v{number}")
