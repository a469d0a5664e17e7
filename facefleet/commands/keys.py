"""`facefleet keys ...`: create (bootstraps the first admin key), list and revoke API keys."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from facefleet.client import remote_client
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.platform import audit, auth
from facefleet.platform.errors import FacefleetError

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
console = make_console()
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", help="API URL (remote mode; key from FACEFLEET_API_KEY). Default: the local database."
    ),
]


def _local_session():  # type: ignore[no-untyped-def]
    from facefleet.platform.db import migrate
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.settings import get_settings

    migrate.upgrade(get_settings().effective_database_url)  # bootstrapping works on a fresh install
    return session_scope()


def default_key_name(role: str) -> str:
    """``admin-20260101-120000``: a valid name that says what the key is and when it was made."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{role if role.isalnum() else 'key'}-{stamp}"


def _fail(error: FacefleetError) -> None:
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


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
    try:
        client = remote_client(server)
        if client is not None:
            with client:
                created = client.post("/v1/keys", {"name": name, "role": role})
            token, key_id = created["key"], created["id"]
        else:
            with _local_session() as session:
                key, token = auth.create_api_key(session, name=name, role=role)
                audit.record(session, "cli", "keys.create", "api_key", key.id, {"name": name, "role": role})
                key_id = key.id
    except FacefleetError as error:
        _fail(error)
        return
    console.print(f"created {role} key {key_id} ({name}); store it now, it is not shown again:")
    typer.echo(token)


def _rows(server: str | None) -> list[dict[str, Any]]:
    client = remote_client(server)
    if client is not None:
        with client:
            return list(client.iter_pages("/v1/keys"))
    from facefleet.api.schemas import ApiKeyRead

    with _local_session() as session:
        keys, _ = auth.list_api_keys(session, limit=10_000, offset=0)
        return [ApiKeyRead.model_validate(k).model_dump(mode="json") for k in keys]


@app.command("list")
def list_keys(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """List keys (never their secrets)."""
    try:
        rows = _rows(server)
    except FacefleetError as error:
        _fail(error)
        return
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
    try:
        client = remote_client(server)
        if client is not None:
            with client:
                client.delete(f"/v1/keys/{key_id}")
        else:
            with _local_session() as session:
                key = auth.revoke_api_key(session, key_id=key_id)
                audit.record(session, "cli", "keys.revoke", "api_key", key.id, {"name": key.name})
    except FacefleetError as error:
        _fail(error)
        return
    console.print(f"revoked key {key_id}")
