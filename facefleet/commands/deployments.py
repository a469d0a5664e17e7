"""`facefleet deployments ...`: roll a model version out to a device group, list rollouts, show per device."""

from __future__ import annotations

from typing import Annotated, get_args

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from facefleet.client import FacefleetClient
from facefleet.commands._output import JsonOption, make_console, print_json
from facefleet.commands._remote import (
    ServerOption,
    connect,
    local_session,
    remote_or_local,
    reported_errors,
    segment,
    validated,
)
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.schemas import (
    DeploymentCreate,
    DeploymentPhase,
    DeploymentRead,
    DeviceRolloutRead,
    DeviceRolloutStatus,
)
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.models import service as registry
from facefleet.platform.models.schemas import ModelVersionView

app = typer.Typer(
    help="Deployments: roll a model version out to a device group (all or canary), follow each device.",
    no_args_is_help=True,
)
console = make_console()


def _version_or_alias(version: str | None, alias: str | None) -> str:
    if (version is None) == (alias is None):
        raise InvalidInputError("name exactly one of --version N or --alias NAME", field="version")
    return version if version is not None else str(alias)


def _resolve_model(client: FacefleetClient | None, name: str, version_or_alias: str) -> ModelVersionView:
    if client is not None:
        path = f"/v1/models/{segment(name)}/versions/{segment(version_or_alias)}"
        return ModelVersionView.model_validate(client.get(path))
    with local_session() as session:
        return registry.version_view(session, registry.get_model_version(session, name, version_or_alias))


@app.command("create")
def create(
    model: Annotated[str, typer.Option("--model", help="registered model name")],
    group: Annotated[str, typer.Option("--group", help="device group to update, e.g. lobby")],
    version: Annotated[str | None, typer.Option("--version", help="model version number")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="model alias, e.g. production")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="all | canary")] = "all",
    canary_percent: Annotated[
        float, typer.Option("--canary-percent", help="share of the group updated first (canary)")
    ] = 0.0,
    max_failure_rate: Annotated[
        float, typer.Option("--max-failure-rate", help="stop and roll back above this failed share (0-1)")
    ] = 0.0,
    release_per_minute: Annotated[
        int | None,
        typer.Option("--release-per-minute", help="pace it: devices released per minute (default: all)"),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Roll a model version out to a device group; the group's running deployment is superseded."""
    with reported_errors(), connect(server) as client:
        target = _resolve_model(client, model, _version_or_alias(version, alias))
        body = validated(
            DeploymentCreate,
            model_version_id=target.id,
            group=group,
            strategy=strategy,
            canary_percent=canary_percent,
            max_failure_rate=max_failure_rate,
            release_per_minute=release_per_minute,
        )
        if client is not None:
            created = DeploymentRead.model_validate(client.post("/v1/deployments", body.model_dump()))
        else:
            created = _create_locally(body)
    console.print(
        f"deployment {created.id}: {target.name} v{target.version} -> group {created.group} "
        f"({created.strategy}, {created.device_count} devices, stage {created.stage})"
    )


def _create_locally(body: DeploymentCreate) -> DeploymentRead:
    with local_session() as session:
        return deployments.create_deployment_audited(session, body, actor="cli")


@app.command("list")
def list_(
    group: Annotated[str | None, typer.Option("--group")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="in_progress | completed | stopped | superseded")
    ] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List deployments, newest first."""

    def local(session: Session) -> list[DeploymentRead]:
        summaries, _total = deployments.list_deployments(session, group=group, limit=10_000)
        return [deployments.summary_read(summary) for summary in summaries]

    rows = remote_or_local(
        server,
        lambda client: [
            DeploymentRead.model_validate(item) for item in client.iter_pages("/v1/deployments", group=group)
        ],
        local,
    )
    # Neither the service nor the API filters by status, so both modes filter the same full list here.
    rows = [row for row in rows if status is None or row.status == status]
    if as_json:
        print_json(rows)
        return
    table = Table(
        "id", "model version", "group", "strategy", "status", "stage", "devices", "installed", "created"
    )
    for row in rows:
        installed = sum(statuses.get("installed", 0) for statuses in row.device_counts.values())
        table.add_row(
            str(row.id),
            str(row.model_version_id),
            row.group,
            row.strategy if row.strategy == "all" else f"canary {row.canary_percent:g}%",
            row.status,
            row.stage,
            str(row.device_count),
            str(installed),
            row.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _device_rows(
    client: FacefleetClient | None,
    session: Session | None,
    deployment_id: int,
    status: str | None,
    phase: str | None,
) -> list[DeviceRolloutRead]:
    """The deployment's device rows matching ``status`` / ``phase``, paged through (the API's
    ``/devices`` route or the same service function locally)."""
    if client is not None:
        items = client.iter_pages(f"/v1/deployments/{deployment_id}/devices", status=status, phase=phase)
        return [DeviceRolloutRead.model_validate(item) for item in items]
    assert session is not None
    rows: list[DeviceRolloutRead] = []
    after: int | None = None
    while True:
        page, _total = deployments.list_deployment_devices(
            session, deployment_id=deployment_id, status=status, phase=phase, limit=500, after=after
        )
        rows += page
        if len(page) < 500:
            return rows
        after = page[-1].device_id


@app.command("show")
def show(
    deployment_id: Annotated[int, typer.Argument(help="deployment id")],
    status: Annotated[
        str | None,
        typer.Option("--status", help="only devices in this status: pending | downloading | installed | ..."),
    ] = None,
    phase: Annotated[
        str | None, typer.Option("--phase", help="only devices of this phase: canary | rest | all")
    ] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """One deployment, its device counts and the status of each device in it (or of those matching
    --status / --phase)."""

    filtered = status is not None or phase is not None
    with reported_errors():
        if status is not None and status not in get_args(DeviceRolloutStatus):
            raise InvalidInputError(f"--status must be one of {', '.join(get_args(DeviceRolloutStatus))}")
        if phase is not None and phase not in get_args(DeploymentPhase):
            raise InvalidInputError(f"--phase must be one of {', '.join(get_args(DeploymentPhase))}")

    def remote(client: FacefleetClient) -> DeploymentRead:
        if not filtered:
            return DeploymentRead.model_validate(client.get(f"/v1/deployments/{deployment_id}"))
        read = DeploymentRead.model_validate(client.get(f"/v1/deployments/{deployment_id}", devices="false"))
        return read.model_copy(update={"devices": _device_rows(client, None, deployment_id, status, phase)})

    def local(session: Session) -> DeploymentRead:
        if not filtered:
            return deployments.deployment_read(
                deployments.get_deployment(session, deployment_id=deployment_id)
            )
        read = deployments.summary_read(
            deployments.get_deployment_summary(session, deployment_id=deployment_id)
        )
        return read.model_copy(update={"devices": _device_rows(None, session, deployment_id, status, phase)})

    view = remote_or_local(server, remote, local)
    if as_json:
        print_json(view)
        return
    finished = f", finished {view.finished_at:%Y-%m-%d %H:%M}" if view.finished_at else ""
    console.print(
        f"deployment {view.id}: model version {view.model_version_id} -> group {view.group} "
        f"[bold]{view.status}[/bold] (stage {view.stage}, {view.strategy}, max failure rate "
        f"{view.max_failure_rate:g}, by {view.created_by or '-'}{finished})"
    )
    counts = ", ".join(
        f"{phase_name}: " + ", ".join(f"{n} {name}" for name, n in sorted(statuses.items()))
        for phase_name, statuses in sorted(view.device_counts.items())
    )
    console.print(f"{view.device_count} devices ({counts or 'none'})")
    table = Table("device", "name", "phase", "status", "previous version", "message", "updated")
    for device in view.devices or []:
        table.add_row(
            str(device.device_id),
            device.device_name,
            device.phase,
            device.status,
            str(device.previous_model_version_id or "-"),
            device.message or "-",
            device.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
