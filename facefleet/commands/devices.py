"""`facefleet devices ...`: register terminals (prints the one-time enrollment token), list, disable."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from facefleet.client import remote_client
from facefleet.platform import audit
from facefleet.platform.devices import service as devices
from facefleet.platform.devices.schemas import DeviceRead
from facefleet.platform.errors import FacefleetError

app = typer.Typer(
    help="Terminals: register (one-time enrollment token), list, disable.", no_args_is_help=True
)
console = Console()
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

    migrate.upgrade(get_settings().effective_database_url)
    return session_scope()


def _fail(error: FacefleetError) -> None:
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="unique device name, e.g. door-1")],
    group: Annotated[str, typer.Option("--group", help="deployment group, e.g. lobby")],
    adaptation: Annotated[
        bool, typer.Option("--adaptation/--no-adaptation", help="opt in to on-device adaptation")
    ] = False,
    ttl: Annotated[int, typer.Option("--ttl", help="enrollment token lifetime in seconds")] = 86400,
    server: ServerOption = None,
) -> None:
    """Register a terminal and print its one-time enrollment token (shown once)."""
    body = {"name": name, "group": group, "adaptation_enabled": adaptation, "token_ttl_seconds": ttl}
    try:
        client = remote_client(server)
        if client is not None:
            with client:
                created = client.post("/v1/devices", body)
            token, device_id, expires = (
                created["enrollment_token"],
                created["device"]["id"],
                created["enrollment_expires_at"],
            )
        else:
            with _local_session() as session:
                device, token, expires_at = devices.register_device(
                    session, name=name, group=group, adaptation_enabled=adaptation, token_ttl_seconds=ttl
                )
                audit.record(
                    session, "cli", "devices.register", "device", device.id, {"name": name, "group": group}
                )
                device_id, expires = device.id, expires_at.isoformat()
    except FacefleetError as error:
        _fail(error)
        return
    console.print(
        f"registered device {device_id} ({name}) in group {group}; enrollment token "
        f"(one use, expires {expires}):"
    )
    typer.echo(token)


def _rows(server: str | None, group: str | None) -> list[dict[str, Any]]:
    client = remote_client(server)
    if client is not None:
        with client:
            if group:
                return list(client.iter_pages("/v1/devices", group=group))
            return list(client.iter_pages("/v1/devices"))
    with _local_session() as session:
        rows, _total = devices.list_devices(session, group=group, limit=10_000)
        return [DeviceRead.model_validate(row).model_dump(mode="json") for row in rows]


@app.command("list")
def list_(group: Annotated[str | None, typer.Option("--group")] = None, server: ServerOption = None) -> None:
    """List terminals with their model version and last heartbeat."""
    table = Table("id", "name", "group", "status", "model version", "agent", "adapts", "last seen")
    try:
        rows = _rows(server, group)
    except FacefleetError as error:
        _fail(error)
        return
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["name"],
            row["group"],
            row["status"],
            str(row["model_version_id"] or "-"),
            row["agent_version"] or "-",
            "yes" if row["adaptation_enabled"] else "no",
            str(row["last_seen_at"] or "-"),
        )
    console.print(table)


@app.command("disable")
def disable(device_id: Annotated[int, typer.Argument(help="device id")], server: ServerOption = None) -> None:
    """Disable a terminal: its credential stops working (403) and it gets no deployments."""
    try:
        client = remote_client(server)
        if client is not None:
            with client:
                client.post(f"/v1/devices/{device_id}/disable")
        else:
            with _local_session() as session:
                device = devices.disable_device(session, device_id=device_id)
                audit.record(session, "cli", "devices.disable", "device", device.id, {"name": device.name})
    except FacefleetError as error:
        _fail(error)
        return
    console.print(f"device {device_id} disabled")
