"""`facefleet keys ...`: create (bootstraps the first admin key), list and revoke API keys."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from facefleet.api.schemas import ApiKeyRead
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors
from facefleet.platform import auth

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
console = make_console()


def default_key_name(role: str) -> str:
    """``admin-20260101-120000``: a valid name that says what the key is and when it was made."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{role if role.isalnum() else 'key'}-{stamp}"


@app.command("create")
def create(
    role: Annotated[
        str, typer.Option("--role", help="admin (all), viewer (read-only) or inspector (label attempts)")
    ] = "viewer",
    name: Annotated[
        str | None,
        typer.Option("--name", help="who uses the key, e.g. ci-bot; default: <role>-<UTC time>"),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    name = name if name is not None else default_key_name(role)
    # Local mode bootstraps the first admin key on a fresh install (local_session migrates first).
    with reported_errors(), connect(server) as client:
        if client is not None:
            created = client.post("/v1/keys", {"name": name, "role": role})
            token, key_id = created["key"], created["id"]
        else:
            with local_session() as session:
                key, token = auth.create_api_key_audited(session, name=name, role=role, actor="cli")
                key_id = key.id
    console.print(f"created {role} key {key_id} ({name}); store it now, it is not shown again:")
    typer.echo(token)


def _rows(server: str | None) -> list[dict[str, Any]]:
    with connect(server) as client:
        if client is not None:
            return list(client.iter_pages("/v1/keys"))
    with local_session() as session:
        keys, _ = auth.list_api_keys(session, limit=10_000, offset=0)
        return [ApiKeyRead.model_validate(k).model_dump(mode="json") for k in keys]


@app.command("list")
def list_keys(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """List keys (never their secrets)."""
    with reported_errors():
        rows = _rows(server)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["name"],
            row["role"],
            row["prefix"],
            str(row["created_at"])[:19],
            str(row["last_used_at"] or "")[:19],
            str(row["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(help="the key's id (see `keys list`)")], server: ServerOption = None
) -> None:
    """Revoke a key: it stops working at once."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            client.delete(f"/v1/keys/{key_id}")
        else:
            with local_session() as session:
                auth.revoke_api_key_audited(session, key_id=key_id, actor="cli")
    console.print(f"revoked key {key_id}")
