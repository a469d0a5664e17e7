"""`facefleet inspections ...`: terminal attempts for inspection: collect, list, label, export, erase."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

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
from facefleet.platform.datasets.schemas import DatasetVersionDetail
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.schemas import (
    AttemptRead,
    CollectionRead,
    CollectionSettings,
    ErasureResult,
    InspectionSetCreate,
    VerdictRequest,
)
from facefleet.platform.store import get_store

app = typer.Typer(
    help="Attempts terminals upload for inspection: collection settings, list, label, export, erase.",
    no_args_is_help=True,
)
console = make_console()
ACTOR = "cli"


@app.command("collect")
def collect(
    group: Annotated[str, typer.Argument(help="device group, e.g. lobby")],
    enabled: Annotated[bool, typer.Option("--on/--off", help="turn collection on or off")] = True,
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="share of selected attempts")] = 1.0,
    attempts: Annotated[
        str, typer.Option("--attempts", help="rejections | near_threshold | all")
    ] = "rejections",
    band: Annotated[float, typer.Option("--band", help="near_threshold: |score - threshold| <= band")] = 0.05,
    retention_days: Annotated[int, typer.Option("--retention-days", help="days attempts are kept")] = 30,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Set which attempts a group's terminals upload (they follow at their next poll)."""
    with reported_errors(), connect(server) as client:
        body = validated(
            CollectionSettings,
            enabled=enabled,
            sample_rate=sample_rate,
            attempts=attempts,
            near_threshold_band=band,
            retention_days=retention_days,
        )
        if client is not None:
            result = CollectionRead.model_validate(
                client.put(f"/v1/collection/{segment(group)}", body.model_dump())
            )
        else:
            with local_session() as session:
                result = inspections.set_collection_audited(session, group=group, settings=body, actor=ACTOR)
    if as_json:
        print_json(result)
        return
    state = (
        f"on: {result.attempts}, sample rate {result.sample_rate:g}, kept {result.retention_days} days"
        if result.enabled
        else "off"
    )
    console.print(f"collection for group {result.group}: {state}")


@app.command("list")
def list_(
    status: Annotated[str, typer.Option("--status", help="pending | labelled")] = "pending",
    device: Annotated[int | None, typer.Option("--device", help="only this device id")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 200,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Attempts within retention, oldest first."""
    with reported_errors(), connect(server) as client:
        if status not in ("pending", "labelled"):
            raise ValueError("--status must be pending or labelled")
        if client is not None:
            rows = [
                AttemptRead.model_validate(row)
                for row in client.iter_pages("/v1/inspections", max_items=limit, status=status, device=device)
            ]
        else:
            with local_session() as session:
                found, _total = inspections.list_attempts(
                    session, status=status, device_id=device, limit=limit
                )
                rows = [inspections.attempt_read(row) for row in found]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "device", "user", "score", "threshold", "decision", "model", "verdict", "expires")
    for row in rows:
        table.add_row(
            str(row.id),
            str(row.device_id),
            row.user,
            f"{row.score:.4f}",
            f"{row.threshold:.4f}",
            row.decision,
            str(row.model_version_id or "-"),
            row.verdict or "-",
            row.expires_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@app.command("label")
def label(
    attempt_id: Annotated[int, typer.Argument(help="attempt id")],
    verdict: Annotated[str, typer.Argument(help="genuine | impostor | unusable")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Record a verdict on an attempt (audited)."""
    with reported_errors(), connect(server) as client:
        body = validated(VerdictRequest, verdict=verdict)
        if client is not None:
            result = AttemptRead.model_validate(
                client.post(f"/v1/inspections/{attempt_id}", body.model_dump())
            )
        else:
            with local_session() as session:
                attempt = inspections.label_attempt_audited(
                    session, attempt_id=attempt_id, verdict=body.verdict, actor=ACTOR
                )
                result = inspections.attempt_read(attempt)
    if as_json:
        print_json(result)
        return
    console.print(f"attempt {result.id}: {result.verdict}")


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="inspection dataset name, e.g. lobby-inspected")],
    attempt: Annotated[list[int] | None, typer.Option("--attempt", help="these attempts (repeat)")] = None,
    device: Annotated[list[int] | None, typer.Option("--device", help="these devices (repeat)")] = None,
    group: Annotated[str | None, typer.Option("--group", help="this device group")] = None,
    model_version: Annotated[
        list[int] | None, typer.Option("--model-version", help="attempts scored by these versions")
    ] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Labelled attempts (genuine/impostor) -> the next version of an inspection dataset."""
    with reported_errors(), connect(server) as client:
        body = validated(
            InspectionSetCreate,
            name=name,
            attempt_ids=attempt or None,
            device_ids=device or None,
            group=group,
            model_version_ids=model_version or None,
        )
        if client is not None:
            result = DatasetVersionDetail.model_validate(
                client.post("/v1/inspection-sets", body.model_dump(mode="json"))
            )
        else:
            with local_session() as session:
                version = inspections.create_inspection_set_audited(session, get_store(), body, actor=ACTOR)
                result = DatasetVersionDetail.model_validate(version)
    if as_json:
        print_json(result)
        return
    console.print(
        f"inspection set {name} v{result.version}: {result.pair_count} attempts "
        f"({result.report.get('genuine')} genuine, {result.report.get('impostor')} impostor)"
    )


@app.command("erase")
def erase(
    device: Annotated[int, typer.Option("--device", help="device id whose attempts are erased")],
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Erase every attempt (rows and face crops) of one device (audited)."""
    result = remote_or_local(
        server,
        lambda client: ErasureResult.model_validate(client.delete(f"/v1/inspections?device={int(device)}")),
        lambda session: inspections.erase_device_attempts_audited(
            session, get_store(), device_id=device, actor=ACTOR
        ),
    )
    if as_json:
        print_json(result)
        return
    console.print(f"erased {result.deleted} attempt(s) of device {result.device_id}")
    if result.inspection_sets_deleted:
        console.print(
            f"deleted inspection set(s) holding its crops: {', '.join(result.inspection_sets_deleted)}"
        )
    if result.inspection_sets_kept:
        console.print(
            f"kept (used by runs; delete the runs' models, runs and datasets to remove them): "
            f"{', '.join(result.inspection_sets_kept)}"
        )
