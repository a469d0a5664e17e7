"""Data for bench/fleet.py: a seeded control plane (admin key, enrolled devices, a signed model version) and
bulk filler rows inserted with one SQL statement per table (generate_series / a recursive CTE), fast enough
for 10^6 rows on either database.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from bench._support import unsigned_model_version
from facefleet.platform.auth import create_api_key
from facefleet.platform.auth.service import hash_token
from facefleet.platform.db.models import (
    AuditEvent,
    Deployment,
    Device,
    DeviceDeployment,
    RetrainPolicy,
    Run,
    RunMetric,
)
from facefleet.platform.store import ObjectStore

FILL_PER_DEPLOYMENT = 1000  # filler device_deployments rows per filler deployment


@dataclass
class Seeded:
    admin_token: str
    credentials: list[str]  # one per bench device, in id order
    device_ids: list[int]
    model_version_id: int
    policy_id: int
    run_id: int  # a run with a fixed, small metric series (the growth table reads it)
    group: str
    extra: dict[str, int] = field(default_factory=dict)


def _version(session: Session, store: ObjectStore, name: str, version: int) -> int:
    card = f'{{"name": "{name}", "version": {version}, "bench": true}}'.encode()
    row = unsigned_model_version(
        session,
        store,
        name,
        version,
        card=card,
        onnx=os.urandom(4096),
        signature="YmVuY2g=",
        eval_summary={"accuracy": 0.9},
    )
    return row.id


def seed(engine: Engine, store: ObjectStore, *, devices: int, group: str = "fleet") -> Seeded:
    """An admin key, ``devices`` enrolled terminals (credentials known), 20 policies, runs and a model."""
    credentials = [f"ffd_bench{i}_{secrets.token_urlsafe(12)}" for i in range(devices)]
    now = datetime.now(timezone.utc)
    with Session(engine, expire_on_commit=False) as session:
        _key, admin = create_api_key(session, name="bench-admin", role="admin")
        session.execute(
            Device.__table__.insert(),
            [
                {
                    "name": f"{group}-{i:05d}",
                    "group": group,
                    "status": "active",
                    "credential_hash": hash_token(cred),
                    "adaptation_enabled": False,
                    "health": {},
                    "last_seen_at": now,
                    "created_at": now,
                }
                for i, cred in enumerate(credentials)
            ],
        )
        ids = list(session.scalars(select(Device.id).where(Device.group == group).order_by(Device.id)))
        version_id = _version(session, store, "bench", 1)
        policies = [
            RetrainPolicy(name=f"bench-{i}", triggers=["manual"], model_name="bench") for i in range(20)
        ]
        session.add_all(policies)
        runs = [Run(name=f"bench-{i}", status="succeeded", config={"steps": 100}) for i in range(20)]
        session.add_all(runs)
        session.flush()
        session.add_all(
            RunMetric(run_id=runs[0].id, step=step, name=name, value=1.0 / (step + 1))
            for step in range(50)
            for name in ("loss", "accuracy")
        )
        session.commit()
        return Seeded(admin, credentials, ids, version_id, policies[0].id, runs[0].id, group)


def _series(engine: Engine, start: int, stop: int) -> str:
    """A FROM item yielding integers x in [start, stop] (inclusive) as column ``x``."""
    if engine.dialect.name == "postgresql":
        return f"generate_series({start}, {stop}) AS s(x)"
    return (
        f"(WITH RECURSIVE c(x) AS (SELECT {start} UNION ALL SELECT x + 1 FROM c WHERE x < {stop}) "
        "SELECT x FROM c) AS s"
    )


def _count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def grow(engine: Engine, *, rows: int, run_id: int, model_version_id: int) -> dict[str, int]:
    """Bring devices, run_metrics, audit_events and device_deployments to at least ``rows`` rows each.

    Filler rows never touch the bench's own devices, run or deployment: the routes read the same rows at
    every size, so any growth in their latency is the table's size showing through.
    """
    now = datetime.now(timezone.utc)
    false = "false" if engine.dialect.name == "postgresql" else "0"
    with Session(engine) as session:
        filler = Device.name.like("fill-%")
        have = int(session.scalar(select(func.count()).where(filler)) or 0)
        own = _count(session, Device) - have
        want = max(rows - own, FILL_PER_DEPLOYMENT)  # the filler rollouts pair with 1000 filler devices
        if have < want:
            session.execute(
                text(
                    'INSERT INTO devices (name, "group", status, adaptation_enabled, health, created_at) '
                    f"SELECT 'fill-' || x, 'fill-' || (x % 100), 'active', {false}, '{{}}', :now "
                    f"FROM {_series(engine, have, want - 1)}"
                ),
                {"now": now},
            )
        have = _count(session, RunMetric)
        if have < rows:
            filler_run = session.scalar(select(Run.id).where(Run.name == "bench-filler"))
            if filler_run is None:
                run = Run(name="bench-filler", status="succeeded", config={})
                session.add(run)
                session.flush()
                filler_run = run.id
            session.execute(
                text(
                    "INSERT INTO run_metrics (run_id, step, name, value, created_at) "
                    f"SELECT {int(filler_run)}, x, 'loss', 0.5, :now FROM {_series(engine, have, rows - 1)}"
                ),
                {"now": now},
            )
        have = _count(session, AuditEvent)
        if have < rows:
            session.execute(
                text(
                    "INSERT INTO audit_events (actor, action, target_type, target_id, details, created_at) "
                    "SELECT 'bench', 'fill.a' || (x % 50), 'device', CAST(x AS VARCHAR(32)), '{}', :now "
                    f"FROM {_series(engine, have, rows - 1)}"
                ),
                {"now": now},
            )
        have = _count(session, DeviceDeployment)
        if have < rows:
            _grow_rollout_rows(session, engine, have=have, rows=rows, version=model_version_id, now=now)
        session.commit()
        counts = {
            name: _count(session, model)
            for name, model in (
                ("devices", Device),
                ("run_metrics", RunMetric),
                ("audit_events", AuditEvent),
                ("device_deployments", DeviceDeployment),
            )
        }
    if engine.dialect.name == "postgresql":
        # What autovacuum would do soon after a bulk load anyway; measuring while it runs measures it.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return counts


def _grow_rollout_rows(
    session: Session, engine: Engine, *, have: int, rows: int, version: int, now: datetime
) -> None:
    """Completed filler deployments of FILL_PER_DEPLOYMENT filler devices each (unique pairs)."""
    first_device = session.scalar(select(func.min(Device.id)).where(Device.name.like("fill-%")))
    assert first_device is not None, "grow devices first"
    wanted = -(-rows // FILL_PER_DEPLOYMENT)
    existing = list(
        session.scalars(select(Deployment.id).where(Deployment.group == "fill").order_by(Deployment.id))
    )
    if len(existing) < wanted:
        session.execute(
            text(
                'INSERT INTO deployments (model_version_id, "group", strategy, canary_percent, '
                "max_failure_rate, status, created_by, created_at) "
                f"SELECT {int(version)}, 'fill', 'all', 0, 0, 'completed', 'bench', :now "
                f"FROM {_series(engine, len(existing), wanted - 1)}"
            ),
            {"now": now},
        )
    first_deployment = session.scalar(select(func.min(Deployment.id)).where(Deployment.group == "fill"))
    per = FILL_PER_DEPLOYMENT
    session.execute(
        text(
            "INSERT INTO device_deployments (deployment_id, device_id, phase, status, message, updated_at) "
            f"SELECT {int(first_deployment or 0)} + x / {per}, {int(first_device)} + x % {per}, 'all', "
            f"'installed', '', :now FROM {_series(engine, have, rows - 1)}"
        ),
        {"now": now},
    )
