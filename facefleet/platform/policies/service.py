"""Retrain-policy service: CRUD and pending triggers. Never commits; the caller owns the transaction.

The ``*_audited`` functions are the use cases the API routes and the CLI's local mode both call: the change
and its audit event, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, NoReturn, Protocol

from croniter import croniter
from pydantic import ValidationError
from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from facefleet.platform import audit
from facefleet.platform.db.base import as_utc
from facefleet.platform.db.models import RetrainPolicy
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.db.views import PageQuery, RowView
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.policies.schemas import PolicyCreate, PolicyFields, PolicyRead, PolicyUpdate

MAX_PENDING_EVENTS = 100


def next_cron_time(cron: str, after: datetime) -> datetime:
    return as_utc(croniter(cron, after).get_next(datetime))  # type: ignore[return-value]


def _apply(policy: RetrainPolicy, spec: PolicyFields, now: datetime) -> None:
    policy.name = spec.name
    policy.enabled = spec.enabled
    policy.triggers = list(spec.triggers)
    policy.cron = spec.cron
    policy.dataset_selector = spec.dataset_selector.model_dump(mode="json")
    policy.verification_sets = list(spec.verification_sets)
    policy.base_config = spec.stored_config()
    policy.model_name = spec.model_name
    policy.metric_name = spec.metric_name
    policy.metric_threshold = spec.metric_threshold
    policy.metric_check_interval_seconds = spec.metric_check_interval_seconds
    policy.debounce_seconds = spec.debounce_seconds
    policy.auto_promote = spec.auto_promote
    policy.notify = spec.notify.model_dump(mode="json")
    policy.next_cron_at = (
        next_cron_time(spec.cron, now) if spec.cron and "schedule" in spec.triggers else None
    )


def _name_taken(session: Session, name: str, exclude_id: int | None = None) -> bool:
    stmt = select(RetrainPolicy.id).where(RetrainPolicy.name == name)
    if exclude_id is not None:
        stmt = stmt.where(RetrainPolicy.id != exclude_id)
    return session.scalar(stmt) is not None


def create_policy(session: Session, *, spec: PolicyCreate, now: datetime | None = None) -> RetrainPolicy:
    if _name_taken(session, spec.name):
        raise ConflictError(
            f"a policy named {spec.name!r} exists; choose another name or update it", field="name"
        )
    policy = RetrainPolicy(pending_events=[])
    _apply(policy, spec, now or datetime.now(timezone.utc))
    session.add(policy)
    session.flush()
    return policy


def get_policy(session: Session, *, policy_id: int) -> RetrainPolicy:
    policy = session.get(RetrainPolicy, policy_id)
    if policy is None:
        _policy_not_found(policy_id)
    return policy


def _policy_not_found(policy_id: int) -> NoReturn:
    raise NotFoundError(
        f"retrain policy {policy_id} does not exist; list them with GET /v1/policies", field="policy_id"
    )


def list_policies(
    session: Session, *, limit: int, offset: int, enabled: bool | None = None, after: int | None = None
) -> tuple[list[RetrainPolicy], int | None]:
    stmt = select(RetrainPolicy)
    if enabled is not None:
        stmt = stmt.where(RetrainPolicy.enabled.is_(enabled))
    return fetch_page(
        session,
        stmt.order_by(RetrainPolicy.id),
        limit=limit,
        offset=offset,
        after=after,
        key=RetrainPolicy.id,
    )


# The API's reads (GET /v1/policies, GET /v1/policies/{id}): Core rows into PolicyRead, one statement.
_VIEW = RowView(PolicyRead, RetrainPolicy.__table__)  # type: ignore[arg-type]
_BY_ID = _VIEW.select().where(RetrainPolicy.id == bindparam("policy_id"))


@cache
def _page_query(by_enabled: bool) -> PageQuery:
    stmt = _VIEW.select()
    if by_enabled:
        stmt = stmt.where(RetrainPolicy.enabled == bindparam("enabled"))
    return PageQuery(stmt.order_by(RetrainPolicy.id), key=RetrainPolicy.id)


def get_policy_view(conn: Connection, *, policy_id: int) -> PolicyRead:
    """``PolicyRead.model_validate(get_policy(...))`` in one SELECT of its columns; 404 the same."""
    row = conn.execute(_BY_ID, {"policy_id": policy_id}).first()
    if row is None:
        _policy_not_found(policy_id)
    return _VIEW.models(_VIEW.dicts([row]))[0]


def list_policy_views(
    conn: Connection, *, limit: int, offset: int, enabled: bool | None = None, after: int | None = None
) -> tuple[list[PolicyRead], int | None]:
    """``list_policies`` as views, in one statement (the page and its bounded count)."""
    params = {} if enabled is None else {"enabled": enabled}
    rows, total = _page_query(enabled is not None).fetch(
        conn, params, limit=limit, offset=offset, after=after
    )
    return _VIEW.models(_VIEW.dicts(rows)), total


def policy_spec(policy: RetrainPolicy) -> dict[str, Any]:
    """The stored policy as the fields a PolicyCreate body would carry."""
    return {name: getattr(policy, name) for name in PolicyFields.model_fields}


def update_policy(
    session: Session, *, policy_id: int, changes: PolicyUpdate, now: datetime | None = None
) -> RetrainPolicy:
    policy = get_policy(session, policy_id=policy_id)
    merged = policy_spec(policy) | changes.model_dump(exclude_unset=True)
    try:
        spec = PolicyFields.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidInputError(f"{field or 'policy'}: {err['msg']}", field=field) from exc
    if _name_taken(session, spec.name, exclude_id=policy.id):
        raise ConflictError(f"a policy named {spec.name!r} exists; choose another name", field="name")
    _apply(policy, spec, now or datetime.now(timezone.utc))
    return policy


def delete_policy(session: Session, *, policy_id: int) -> None:
    policy = get_policy(session, policy_id=policy_id)
    if policy.active_run_id is not None:
        raise ConflictError(
            f"policy {policy.name!r} has run {policy.active_run_id} in flight; cancel it or wait "
            "for it to finish, then delete the policy",
            field="policy_id",
        )
    session.delete(policy)


class PendingTrigger(Protocol):
    """What ``add_trigger`` changes: a policy row, or the columns of one read with Core."""

    pending_events: list[dict[str, Any]]
    pending_trigger: str | None
    pending_since: datetime | None
    debounce_seconds: int


@dataclass
class _Pending:
    pending_events: list[dict[str, Any]]
    pending_trigger: str | None
    pending_since: datetime | None
    debounce_seconds: int


def add_trigger(
    policy: PendingTrigger,
    *,
    kind: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
    immediate: bool = False,
) -> None:
    """Merge a trigger into the policy's pending one; the debounce window runs from the first trigger."""
    events = list(policy.pending_events or [])
    events.append({"kind": kind, "at": now.isoformat(), **(detail or {})})
    policy.pending_events = events[-MAX_PENDING_EVENTS:]
    if policy.pending_trigger is None or policy.pending_since is None:
        policy.pending_trigger = kind
        policy.pending_since = now
    if immediate:
        # An explicit request skips the debounce window: make the pending trigger due now.
        due_now = now - timedelta(seconds=policy.debounce_seconds)
        policy.pending_since = min(as_utc(policy.pending_since) or now, due_now)
        policy.pending_trigger = kind


def request_fire(
    session: Session, *, policy_id: int, requested_by: str, now: datetime | None = None
) -> RetrainPolicy:
    """An explicit request: the scheduler starts a run at its next tick (merged with anything pending)."""
    policy = get_policy(session, policy_id=policy_id)
    if not policy.enabled:
        _disabled(policy.name, policy.id)
    add_trigger(
        policy,
        kind="manual",
        now=now or datetime.now(timezone.utc),
        detail={"requested_by": requested_by},
        immediate=True,
    )
    return policy


def create_policy_audited(session: Session, spec: PolicyCreate, *, actor: str) -> PolicyRead:
    """Create a policy from a validated request and record who did it."""
    policy = create_policy(session, spec=spec)
    audit.record(session, actor, "policies.create", "policy", policy.id, {"name": policy.name})
    return PolicyRead.model_validate(policy)


def update_policy_audited(
    session: Session, policy_id: int, changes: PolicyUpdate, *, actor: str
) -> PolicyRead:
    """Change the fields a request sets; the audit event names them."""
    policy = update_policy(session, policy_id=policy_id, changes=changes)
    fields = sorted(changes.model_dump(exclude_unset=True))
    audit.record(session, actor, "policies.update", "policy", policy.id, {"fields": fields})
    return PolicyRead.model_validate(policy)


def delete_policy_audited(session: Session, policy_id: int, *, actor: str) -> None:
    """Delete a policy with no run in flight, and record who did it."""
    delete_policy(session, policy_id=policy_id)
    audit.record(session, actor, "policies.delete", "policy", policy_id)


def _disabled(name: str, policy_id: int) -> NoReturn:
    raise ConflictError(
        f"policy {name!r} is disabled; enable it with PATCH "
        f'/v1/policies/{policy_id} {{"enabled": true}} first',
        field="policy_id",
    )


_TABLE = RetrainPolicy.__table__
_SET_PENDING = (
    update(RetrainPolicy)
    .where(RetrainPolicy.id == bindparam("policy_id"))
    .values(
        pending_events=bindparam("new_events", type_=_TABLE.c.pending_events.type),
        pending_trigger=bindparam("new_trigger", type_=_TABLE.c.pending_trigger.type),
        pending_since=bindparam("new_since", type_=_TABLE.c.pending_since.type),
    )
)


def fire_policy_audited(session: Session, policy_id: int, *, actor: str) -> PolicyRead:
    """Ask the scheduler to start the policy's run at its next tick, and record who asked.

    ``request_fire`` done with two Core statements in the session's transaction (the view's SELECT, an
    UPDATE of the three pending-trigger columns) instead of loading and flushing the ORM row: the same
    change, the same answer and the same audit event (``tests/platform/test_db_views.py`` compares them).
    """
    session.flush()  # the SELECT below sees what the caller changed in this session
    conn = session.connection()
    row = conn.execute(_BY_ID, {"policy_id": policy_id}).first()
    if row is None:
        _policy_not_found(policy_id)
    item = _VIEW.dicts([row])[0]
    if not item["enabled"]:
        _disabled(item["name"], policy_id)
    pending = _Pending(
        item["pending_events"] or [], item["pending_trigger"], item["pending_since"], item["debounce_seconds"]
    )
    add_trigger(
        pending,
        kind="manual",
        now=datetime.now(timezone.utc),
        detail={"requested_by": actor},
        immediate=True,
    )
    conn.execute(
        _SET_PENDING,
        {
            "policy_id": policy_id,
            "new_events": pending.pending_events,
            "new_trigger": pending.pending_trigger,
            "new_since": pending.pending_since,
        },
    )
    loaded = session.identity_map.get(session.identity_key(RetrainPolicy, policy_id))
    if loaded is not None:
        session.expire(loaded)  # a row this session holds reloads the new values when next read
    audit.record(session, actor, "policies.fire", "policy", policy_id)
    item.update(
        pending_events=pending.pending_events,
        pending_trigger=pending.pending_trigger,
        pending_since=pending.pending_since,
    )
    return _VIEW.models([item])[0]
