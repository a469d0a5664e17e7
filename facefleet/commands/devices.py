"""`facefleet devices ...`: register terminals (prints the one-time enrollment token), list, disable."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import ServerOption, connect, local_session, reported_errors, validated
from facefleet.platform.devices import service as devices
from facefleet.platform.devices.schemas import DeviceCreate, DeviceRead, DeviceRegistered

app = typer.Typer(
    help="Terminals: register (one-time enrollment token), list, disable.", no_args_is_help=True
)
console = make_console()


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
    with reported_errors(), connect(server) as client:
        body = validated(
            DeviceCreate, name=name, group=group, adaptation_enabled=adaptation, token_ttl_seconds=ttl
        )
        if client is not None:
            created = DeviceRegistered.model_validate(client.post("/v1/devices", body.model_dump()))
        else:
            created = _register_locally(body)
    device = created.device
    console.print(
        f"registered device {device.id} ({device.name}) in group {device.group}; enrollment token "
        f"(one use, expires {created.enrollment_expires_at.isoformat()}):"
    )
    typer.echo(created.enrollment_token)


def _register_locally(body: DeviceCreate) -> DeviceRegistered:
    with local_session() as session:
        return devices.register_device_audited(session, body, actor="cli")


@app.command("list")
def list_(
    group: Annotated[str | None, typer.Option("--group")] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List terminals with their model version and last heartbeat."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            rows = [DeviceRead.model_validate(row) for row in client.iter_pages("/v1/devices", group=group)]
        else:
            with local_session() as session:
                found, _total = devices.list_devices(session, group=group, limit=10_000)
                rows = [DeviceRead.model_validate(row) for row in found]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "group", "status", "model version", "agent", "adapts", "last seen")
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            row.group,
            row.status,
            str(row.model_version_id or "-"),
            row.agent_version or "-",
            "yes" if row.adaptation_enabled else "no",
            str(row.last_seen_at or "-"),
        )
    console.print(table)


@app.command("disable")
def disable(device_id: Annotated[int, typer.Argument(help="device id")], server: ServerOption = None) -> None:
    """Disable a terminal: its credential stops working (403) and it gets no deployments."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            client.post(f"/v1/devices/{device_id}/disable")
        else:
            with local_session() as session:
                devices.disable_device_audited(session, device_id, actor="cli")
    console.print(f"device {device_id} disabled")
