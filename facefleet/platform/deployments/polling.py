"""The terminal's hot paths in SQLAlchemy Core: poll, heartbeat and status in as few round trips as possible.

Every terminal polls ``GET /v1/device/assignment`` every 30 s and heartbeats every 60 s, so at 10,000
terminals these are ~500 requests per second. The ORM path read the device, the group's collection
setting, the latest deployment, the device's row in it and the target's card hash one query at a time,
inside BEGIN/COMMIT (8 round trips with the pool's ping). Here one statement (``STATE``, built once, so
SQLAlchemy compiles it once) authenticates the credential **and** reads everything the answer depends on,
on an autocommit connection (a single SELECT needs no transaction): a 304 costs the ping and that SELECT.

Security is unchanged: the credential's SHA-256 is looked up on every request (no cache), the stored hash
is compared with ``hmac.compare_digest``, a disabled device gets 403, an unknown credential 401. The rare
cases the statement cannot answer alone (a device that joined a rollout late needs its row inserted; a
report on a deployment that is not the group's latest; a ``failed`` report that may stop the rollout) fall
back to the ORM use cases, in the same transaction.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    exists,
    false,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session, aliased

from facefleet.platform.auth.service import hash_token
from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import (
    CollectionSetting,
    Deployment,
    Device,
    DeviceDeployment,
    ModelVersion,
)
from facefleet.platform.deployments import service as deployments
from facefleet.platform.deployments.assignment import (
    AssignedModelCache,
    AssignmentState,
    assignment_state,
    render_assignment,
    state_for,
    target_version_id,
)
from facefleet.platform.deployments.pacing import turn_has_come
from facefleet.platform.deployments.schemas import AssignmentRead
from facefleet.platform.devices.service import CREDENTIAL_PREFIX
from facefleet.platform.errors import AuthenticationError, PermissionDeniedError
from facefleet.platform.inspections.schemas import AssignedCollection
from facefleet.platform.store import ObjectStore

_dev = cast(Table, Device.__table__)
_dep = cast(Table, Deployment.__table__)
_dd = cast(Table, DeviceDeployment.__table__)
_cs = cast(Table, CollectionSetting.__table__)
_target = aliased(ModelVersion.__table__, name="target_mv")
_previous = aliased(ModelVersion.__table__, name="previous_mv")
_canary = aliased(DeviceDeployment.__table__, name="canary_dd")

# The calling device, by its credential's hash (indexed).
_me = (
    select(_dev.c.id, _dev.c.name, _dev.c.group, _dev.c.status, _dev.c.credential_hash)
    .where(_dev.c.credential_hash == bindparam("digest"))
    .cte("me")
)
# Its group's latest live deployment (the (group, id) index, newest first, one row).
_latest = (
    select(
        _dep.c.id,
        _dep.c.status,
        _dep.c.model_version_id,
        _dep.c.created_at,
        _dep.c.release_per_minute,
        _dep.c.rest_released_at,
    )
    .where(_dep.c.group == select(_me.c.group).scalar_subquery(), _dep.c.status != "superseded")
    .order_by(_dep.c.id.desc())
    .limit(1)
    .cte("latest")
)
# Only a "rest" device of a live canary rollout needs to know whether canaries are still working.
_canaries_working = case(
    (
        and_(_dd.c.phase == "rest", _latest.c.status == "in_progress"),
        exists().where(
            _canary.c.deployment_id == _latest.c.id,
            _canary.c.phase == "canary",
            or_(*(_canary.c.status == status for status in deployments.UNFINISHED_STATUSES)),
        ),
    ),
    else_=false(),
)
STATE = select(
    _me.c.id,
    _me.c.name,
    _me.c.status,
    _me.c.credential_hash,
    _latest.c.id.label("deployment_id"),
    _latest.c.status.label("deployment_status"),
    _latest.c.model_version_id.label("deployment_model_id"),
    _dd.c.id.label("row_id"),
    _dd.c.phase,
    _dd.c.release_slot,
    _latest.c.created_at,
    _latest.c.release_per_minute,
    _latest.c.rest_released_at,
    _dd.c.status.label("row_status"),
    _dd.c.previous_model_version_id,
    _target.c.card_sha256.label("target_card"),
    _previous.c.card_sha256.label("previous_card"),
    _canaries_working.label("canaries_working"),
    _cs.c.enabled.label("collect"),
    _cs.c.sample_rate,
    _cs.c.attempts,
    _cs.c.near_threshold_band,
).select_from(
    _me.outerjoin(_latest, true())
    .outerjoin(_dd, and_(_dd.c.deployment_id == _latest.c.id, _dd.c.device_id == _me.c.id))
    .outerjoin(_target, _target.c.id == _latest.c.model_version_id)
    .outerjoin(_previous, _previous.c.id == _dd.c.previous_model_version_id)
    .outerjoin(_cs, _cs.c.group == _me.c.group)
)

_HEARTBEAT = (
    update(_dev)
    .where(_dev.c.credential_hash == bindparam("digest"), _dev.c.status != "disabled")
    .values(
        agent_version=bindparam("agent_version"),
        model_version_id=bindparam("model_version_id"),
        health=bindparam("health", type_=_dev.c.health.type),
        last_seen_at=bindparam("now"),
    )
    .returning(_dev.c.id, _dev.c.status, _dev.c.adaptation_enabled)
)
_DEVICE_BY_HASH = select(_dev.c.name, _dev.c.status, _dev.c.credential_hash).where(
    _dev.c.credential_hash == bindparam("digest")
)
_SET_ROW_STATUS = (
    update(_dd)
    .where(_dd.c.id == bindparam("row_id"), _dd.c.status == bindparam("old_status"))
    .values(status=bindparam("new_status"), message=bindparam("message"), updated_at=bindparam("now"))
)
_SET_DEVICE_MODEL = (
    update(_dev).where(_dev.c.id == bindparam("device_id")).values(model_version_id=bindparam("model_id"))
)
_ANY_UNFINISHED = (
    select(_dd.c.id)
    .where(
        _dd.c.deployment_id == bindparam("deployment_id"),
        or_(*(_dd.c.status == status for status in deployments.UNFINISHED_STATUSES)),
    )
    .limit(1)
)


# A device that finishes takes its deployment's row lock before writing (service.FINISHING_STATUSES): reports
# that can complete the rollout or the canary phase run one after another, so the last one sees the others.
_LOCK_DEPLOYMENT = (
    select(_dep.c.status, _dep.c.rest_released_at)
    .where(_dep.c.id == bindparam("deployment_id"))
    .with_for_update()
)


def credential_digest(credential: str) -> str:
    """The stored form of a device credential; 401 for anything that is not one."""
    if not credential.startswith(CREDENTIAL_PREFIX):
        raise AuthenticationError("not a device credential; send 'Authorization: Bearer ffd_...'")
    return hash_token(credential)


def _authenticated(row: Any, digest: str) -> Any:
    """``row`` (the device's) when the credential matched and the device is enabled; else 401 / 403."""
    if row is None or not hmac.compare_digest(str(row.credential_hash), digest):
        raise AuthenticationError("unknown device credential; enroll the terminal again")
    if row.status == "disabled":
        raise PermissionDeniedError(f"device {row.name!r} is disabled")
    return row


def _collection(row: Any) -> AssignedCollection:
    if not row.collect or row.sample_rate is None or row.sample_rate <= 0:
        return _NO_COLLECTION
    return AssignedCollection(
        enabled=True,
        sample_rate=row.sample_rate,
        attempts=row.attempts,
        near_threshold_band=row.near_threshold_band,
    )


_NO_COLLECTION = AssignedCollection()


def state_of(row: Any) -> AssignmentState | None:
    """The assignment state from one ``STATE`` row; None when the ORM path must answer (late joiner)."""
    collection = _collection(row)
    if row.deployment_id is None:
        return AssignmentState(deployment_id=None, action="none", collection=collection)
    if row.row_id is None:  # joined after the rollout began: its row is inserted by the ORM path
        if row.deployment_status == "stopped":
            return AssignmentState(deployment_id=None, action="none", collection=collection)
        return None
    stage = (
        "done"
        if row.deployment_status != "in_progress"
        else ("canary" if row.canaries_working else "rollout")
    )
    target = target_version_id(
        deployment_status=row.deployment_status,
        deployment_model_id=row.deployment_model_id,
        row_status=row.row_status,
        row_phase=row.phase,
        previous_model_id=row.previous_model_version_id,
        stage=stage,
        paced=turn_has_come(row, row),  # the row carries the deployment's columns too
    )
    return state_for(
        deployment_id=row.deployment_id,
        deployment_status=row.deployment_status,
        row_status=row.row_status,
        target_id=target,
        collection=collection,
        card_of=lambda version_id: (
            (row.target_card if version_id == row.deployment_model_id else row.previous_card) or ""
        ),
    )


@dataclass(frozen=True)
class PollAnswer:
    """An assignment answer: ``body`` is None for a 304 (the terminal has ``etag`` already)."""

    etag: str
    body: AssignmentRead | None


def _slow_state(conn: Connection, device_id: int) -> AssignmentState:
    """The ORM use case, in ``conn``'s transaction (it may insert the late joiner's row)."""
    with Session(bind=conn) as session:
        device = session.get(Device, device_id)
        assert device is not None
        state = assignment_state(session, device)
        session.flush()
    return state


def _render(
    engine: Engine, state: AssignmentState, store: ObjectStore, cache: AssignedModelCache
) -> AssignmentRead:
    with Session(engine) as session:  # opened lazily: a cached model part needs no database
        return render_assignment(session, state, store=store, cache=cache)


def poll(
    engine: Engine,
    autocommit: Engine,
    credential: str,
    if_none_match: Callable[[str], bool],
    *,
    store: ObjectStore,
    cache: AssignedModelCache,
) -> PollAnswer:
    """Authenticate and compute the assignment in one SELECT; the body only when the ETag differs."""
    digest = credential_digest(credential)
    with autocommit.connect() as conn:
        row = _authenticated(conn.execute(STATE, {"digest": digest}).first(), digest)
    state = state_of(row)
    if state is None:
        with engine.begin() as conn:
            state = _slow_state(conn, int(row.id))
    if if_none_match(state.etag):
        return PollAnswer(state.etag, None)
    return PollAnswer(state.etag, _render(engine, state, store, cache))


def heartbeat(
    autocommit: Engine,  # the app's autocommit engine on PostgreSQL; the plain one on SQLite
    credential: str,
    *,
    agent_version: str,
    model_version_id: int | None,
    health: dict[str, Any],
) -> tuple[int, str, bool]:
    """Authenticate and record a heartbeat in one UPDATE ... RETURNING (a single statement: autocommit).

    Returns the device's (id, status, adaptation_enabled); 401 unknown, 403 disabled.
    """
    digest = credential_digest(credential)
    params = {
        "digest": digest,
        "agent_version": agent_version,
        "model_version_id": model_version_id,
        "health": health,
        "now": utcnow(),
    }
    with autocommit.connect() as conn:
        row = conn.execute(_HEARTBEAT, params).first()
        if row is None:  # nothing written: unknown or disabled, say which
            _authenticated(conn.execute(_DEVICE_BY_HASH, {"digest": digest}).first(), digest)
            raise AuthenticationError("unknown device credential; enroll the terminal again")
        conn.commit()  # a no-op in autocommit (PostgreSQL); SQLite's driver began a transaction
    return int(row[0]), str(row[1]), bool(row[2])


def report_status(
    engine: Engine,
    credential: str,
    *,
    deployment_id: int,
    status: str,
    message: str,
    store: ObjectStore,
    cache: AssignedModelCache,
) -> PollAnswer:
    """Record a device's progress in its latest rollout, advance the rollout, answer the new assignment.

    One transaction: the state SELECT (authenticates), a guarded UPDATE of the device's row; for
    ``installed`` also the deployment's row lock (first, so that two last devices cannot both miss the
    rollout's end), the device's model and one EXISTS for completion. The state is read again only when the
    rollout's status changed. Anything else goes through the ORM use case.
    """
    digest = credential_digest(credential)
    with engine.begin() as conn:
        row = _authenticated(conn.execute(STATE, {"digest": digest}).first(), digest)
        fast = (
            row.deployment_id == deployment_id
            and row.row_id is not None
            and status in ("downloading", "installed")
            and row.row_status in deployments.ALLOWED_TRANSITIONS[status]
        )
        if fast and status in deployments.FINISHING_STATUSES:
            locked = conn.execute(_LOCK_DEPLOYMENT, {"deployment_id": deployment_id}).first()
            # What another report changed while this one waited goes through the use case.
            fast = locked is not None and tuple(locked) == (row.deployment_status, row.rest_released_at)
        updated = fast and (
            conn.execute(
                _SET_ROW_STATUS,
                {
                    "row_id": row.row_id,
                    "old_status": row.row_status,
                    "new_status": status,
                    "message": message,
                    "now": utcnow(),
                },
            ).rowcount
            == 1
        )
        after = None  # the state row after this report, when it is known without reading it again
        if updated:
            if status == "installed":
                conn.execute(_SET_DEVICE_MODEL, {"device_id": row.id, "model_id": row.deployment_model_id})
                if row.phase == "canary" and row.rest_released_at is None:
                    deployments.release_rest_if_canaries_done(conn, deployment_id)
            if (
                status in deployments.FINISHING_STATUSES
                and row.deployment_status == "in_progress"
                and _nothing_left(conn, deployment_id)
            ):
                _complete(conn, deployment_id, status)  # the rollout's status changed: read it again
            else:
                # Only this device's row changed; whether canaries are still working matters only to a
                # "rest" device, whose own report cannot change it.
                after = SimpleNamespace(**{**row._mapping, "row_status": status})
        else:  # anything unusual (or a concurrent report): the ORM use case, which explains refusals
            _report_slow(conn, int(row.id), deployment_id, status, message)
        if after is None:
            after = _authenticated(conn.execute(STATE, {"digest": digest}).first(), digest)
        state = state_of(after)
        if state is None:
            state = _slow_state(conn, int(row.id))
    return PollAnswer(state.etag, _render(engine, state, store, cache))


def _nothing_left(conn: Connection, deployment_id: int) -> bool:
    """Whether every device of the deployment has finished (under the deployment's row lock)."""
    return conn.execute(_ANY_UNFINISHED, {"deployment_id": deployment_id}).first() is None


def _complete(conn: Connection, deployment_id: int, reported: str) -> None:
    """The last device finished: the use case completes the rollout and notifies (rare: once per rollout)."""
    with Session(bind=conn) as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        deployments.advance(session, deployment, reported=reported)
        session.flush()


def _report_slow(conn: Connection, device_id: int, deployment_id: int, status: str, message: str) -> None:
    with Session(bind=conn) as session:
        device = session.get(Device, device_id)
        assert device is not None
        deployments.report_device_status(
            session, device, deployment_id=deployment_id, status=status, message=message
        )
        session.flush()
