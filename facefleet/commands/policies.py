"""`facefleet policies ...`: retrain policies (when to retrain on which datasets): create, list, show, update,
delete, fire."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    validated,
)
from facefleet.commands.runs import load_config
from facefleet.platform.policies import service
from facefleet.platform.policies.schemas import PolicyCreate, PolicyRead, PolicyUpdate
from facefleet.platform.runs.schemas import apply_overrides

app = typer.Typer(
    help="Retrain policies: when to retrain (dataset added, schedule, metric drop, manual) and on what.",
    no_args_is_help=True,
)
console = make_console()

TriggerOption = Annotated[
    list[str],
    typer.Option(
        "--trigger",
        help="dataset_added | schedule | metric_drop | manual; comma-separated or repeated "
        "(create default: schedule with --cron, else manual)",
    ),
]
CronOption = Annotated[str | None, typer.Option("--cron", help="5-field cron (UTC), e.g. '0 3 * * *'")]
DatasetsOption = Annotated[list[str], typer.Option("--datasets", help="training dataset names (a,b)")]
GlobOption = Annotated[str | None, typer.Option("--glob", help="training datasets by name, e.g. 'faces-*'")]
TagOption = Annotated[list[str], typer.Option("--tag", help="training datasets carrying this tag")]
VerificationOption = Annotated[list[str], typer.Option("--verification", help="verification sets (a,b)")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", exists=True, dir_okay=False, help="YAML file of TrainingConfig fields"),
]
SetOption = Annotated[list[str], typer.Option("--set", help="override one config field, e.g. steps=500")]
ThresholdOption = Annotated[
    float | None, typer.Option("--metric-threshold", help="metric_drop fires below this (0-1)")
]
DebounceOption = Annotated[
    int | None, typer.Option("--debounce", help="seconds to gather triggers before one run")
]
WebhookOption = Annotated[list[str], typer.Option("--webhook", help="http(s) URL notified of outcomes")]
EmailOption = Annotated[list[str], typer.Option("--email", help="address notified of outcomes")]
PolicyIdArgument = Annotated[int, typer.Argument(help="policy id")]


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _selector(datasets: list[str], glob: str | None, tags: list[str]) -> dict[str, Any] | None:
    """The dataset selector the options name, or None when none was given (every dataset / unchanged)."""
    if not datasets and glob is None and not tags:
        return None
    return {"names": _split(datasets), "glob": glob, "tags": _split(tags)}


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="unique policy name")],
    trigger: TriggerOption = [],  # noqa: B006 (typer reads the default; it is never mutated)
    cron: CronOption = None,
    datasets: DatasetsOption = [],  # noqa: B006
    glob: GlobOption = None,
    tag: TagOption = [],  # noqa: B006
    verification: VerificationOption = [],  # noqa: B006
    config_file: ConfigOption = None,
    assignments: SetOption = [],  # noqa: B006
    model_name: Annotated[str, typer.Option("--model-name", help="model the runs register")] = "facefleet",
    metric_name: Annotated[str, typer.Option("--metric-name")] = "accuracy",
    metric_threshold: ThresholdOption = None,
    debounce: DebounceOption = None,
    auto_promote: Annotated[
        bool, typer.Option("--auto-promote", help="promote the new model when it beats production")
    ] = False,
    webhook: WebhookOption = [],  # noqa: B006
    email: EmailOption = [],  # noqa: B006
    disabled: Annotated[bool, typer.Option("--disabled", help="create it switched off")] = False,
    server: ServerOption = None,
) -> None:
    """Create a retrain policy."""
    with reported_errors(), connect(server) as client:
        fields = _without_none(
            {
                "name": name,
                "enabled": not disabled,
                "triggers": _split(trigger) or (["schedule"] if cron else ["manual"]),
                "cron": cron,
                "dataset_selector": _selector(datasets, glob, tag),
                "verification_sets": _split(verification),
                "base_config": load_config(config_file, assignments),
                "model_name": model_name,
                "metric_name": metric_name,
                "metric_threshold": metric_threshold,
                "debounce_seconds": debounce,
                "auto_promote": auto_promote,
                "notify": {"webhooks": webhook, "emails": email},
            }
        )
        spec = validated(PolicyCreate, **fields)  # local mode refuses what the API would
        if client is not None:
            # The fields as typed, not the dumped spec: the server stores only the config fields sent.
            policy = PolicyRead.model_validate(client.post("/v1/policies", fields))
        else:
            with local_session() as session:
                policy = service.create_policy_audited(session, spec, actor="cli")
    console.print(f"policy {policy.id} ({policy.name}) created; triggers: {', '.join(policy.triggers)}")


@app.command("list")
def list_(
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="only enabled (or disabled) policies")
    ] = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """List retrain policies."""

    def local(session: Session) -> list[PolicyRead]:
        found, _total = service.list_policies(session, limit=10_000, offset=0, enabled=enabled)
        return [PolicyRead.model_validate(row) for row in found]

    rows = remote_or_local(
        server,
        lambda client: [
            PolicyRead.model_validate(item) for item in client.iter_pages("/v1/policies", enabled=enabled)
        ],
        local,
    )
    if as_json:
        print_json(rows)
        return
    table = Table(
        "id", "name", "enabled", "triggers", "cron", "next cron", "pending", "active run", "last fired"
    )
    for row in rows:
        table.add_row(
            str(row.id),
            row.name,
            "yes" if row.enabled else "no",
            ", ".join(row.triggers),
            row.cron or "-",
            _when(row.next_cron_at),
            row.pending_trigger or "-",
            str(row.active_run_id or "-"),
            _when(row.last_fired_at),
        )
    console.print(table)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _fetch(client: FacefleetClient | None, policy_id: int) -> PolicyRead:
    if client is not None:
        return PolicyRead.model_validate(client.get(f"/v1/policies/{policy_id}"))
    with local_session() as session:
        return PolicyRead.model_validate(service.get_policy(session, policy_id=policy_id))


@app.command("show")
def show(policy_id: PolicyIdArgument, as_json: JsonOption = False, server: ServerOption = None) -> None:
    """Every setting and the trigger state of one policy."""
    with reported_errors(), connect(server) as client:
        policy = _fetch(client, policy_id)
    if as_json:
        print_json(policy)
        return
    _print_policy(policy)


def _print_policy(policy: PolicyRead) -> None:
    table = Table("setting", "value", title=f"policy {policy.id} ({policy.name})")
    shown = policy.model_dump(exclude={"id", "pending_events"})
    for key, value in shown.items():
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value) or "-"
        table.add_row(key, "-" if value is None or value == {} else str(value))
    table.add_row("pending_events", str(len(policy.pending_events)))
    console.print(table)


@app.command("update")
def update(
    policy_id: PolicyIdArgument,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
    name: Annotated[str | None, typer.Option("--name")] = None,
    trigger: TriggerOption = [],  # noqa: B006
    cron: CronOption = None,
    datasets: DatasetsOption = [],  # noqa: B006
    glob: GlobOption = None,
    tag: TagOption = [],  # noqa: B006
    verification: VerificationOption = [],  # noqa: B006
    config_file: ConfigOption = None,
    assignments: SetOption = [],  # noqa: B006
    metric_threshold: ThresholdOption = None,
    debounce: DebounceOption = None,
    auto_promote: Annotated[bool | None, typer.Option("--auto-promote/--no-auto-promote")] = None,
    webhook: WebhookOption = [],  # noqa: B006
    email: EmailOption = [],  # noqa: B006
    server: ServerOption = None,
) -> None:
    """Change some settings of a policy; options not given stay as they are (--set edits its config)."""
    with reported_errors(), connect(server) as client:
        changes = _without_none(
            {
                "enabled": enabled,
                "name": name,
                "triggers": _split(trigger) or None,
                "cron": cron,
                "dataset_selector": _selector(datasets, glob, tag),
                "verification_sets": _split(verification) or None,
                "metric_threshold": metric_threshold,
                "debounce_seconds": debounce,
                "auto_promote": auto_promote,
                "notify": {"webhooks": webhook, "emails": email} if webhook or email else None,
            }
        )
        if config_file is not None or assignments:
            changes["base_config"] = _updated_config(client, policy_id, config_file, assignments)
        if not changes:
            raise ValueError("nothing to change: give at least one option, e.g. --disable")
        body = validated(PolicyUpdate, **changes)
        if client is not None:
            policy = PolicyRead.model_validate(client.patch(f"/v1/policies/{policy_id}", changes))
        else:
            with local_session() as session:
                policy = service.update_policy_audited(session, policy_id, body, actor="cli")
    console.print(f"policy {policy.id} ({policy.name}) updated: {describe_changes(changes, policy)}")


def describe_changes(changes: dict[str, Any], policy: PolicyRead) -> str:
    """``enabled -> false, cron -> '0 3 * * *'``: each changed setting with the value it has now."""
    now = policy.model_dump(mode="json")
    parts = []
    for key in sorted(changes):
        value = now.get(key, changes[key])
        if key == "base_config":
            parts.append("base_config (training config) replaced")
        elif isinstance(value, bool):
            parts.append(f"{key} -> {'true' if value else 'false'}")
        else:
            parts.append(f"{key} -> {value!r}")
    return ", ".join(parts)


def _updated_config(
    client: FacefleetClient | None, policy_id: int, config_file: Path | None, assignments: list[str]
) -> dict[str, Any]:
    """--config replaces the stored training config; --set alone edits the stored one in place."""
    if config_file is not None:
        return load_config(config_file, assignments)
    return apply_overrides(_fetch(client, policy_id).base_config, assignments)


@app.command("delete")
def delete(policy_id: PolicyIdArgument, server: ServerOption = None) -> None:
    """Delete a policy (refused while a run it started is in flight)."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            client.delete(f"/v1/policies/{policy_id}")
        else:
            with local_session() as session:
                service.delete_policy_audited(session, policy_id, actor="cli")
    console.print(f"policy {policy_id} deleted")


@app.command("fire")
def fire(policy_id: PolicyIdArgument, server: ServerOption = None) -> None:
    """Fire a policy now: the scheduler starts its run at the next tick (merged with pending triggers)."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            policy = PolicyRead.model_validate(client.post(f"/v1/policies/{policy_id}:fire"))
        else:
            with local_session() as session:
                policy = service.fire_policy_audited(session, policy_id, actor="cli")
    console.print(f"policy {policy.id} ({policy.name}) fired; the scheduler starts the run at its next tick")
