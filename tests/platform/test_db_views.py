"""The admin reads built from Core rows (db/views.py) give byte-for-byte the views the ORM path builds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import utcnow
from facefleet.platform.db.models import (
    AuditEvent,
    Dataset,
    DatasetVersion,
    Device,
    ModelAlias,
    ModelVersion,
    RetrainPolicy,
    Run,
    RunDataset,
)
from facefleet.platform.db.paging import fetch_page
from facefleet.platform.devices import service as devices
from facefleet.platform.devices.schemas import DeviceRead
from facefleet.platform.errors import ConflictError, NotFoundError
from facefleet.platform.models import service as registry
from facefleet.platform.policies import service as policies
from facefleet.platform.policies.schemas import PolicyRead
from facefleet.platform.runs import listing
from facefleet.platform.runs import service as runs

# Values the JSON round trip could change: non-ASCII text, small and large floats, nesting, nulls.
ODD_JSON: dict[str, Any] = {"lr": 1e-05, "big": 12345678901234, "name": "Zoë ☃", "nested": {"a": [1, None]}}
PAGES = [(1, 0, None), (3, 0, None), (3, 2, None), (3, 0, 4), (50, 0, None), (2, 100, None), (2, 0, 10**6)]


def _dumped(views: Sequence[BaseModel]) -> list[bytes]:
    return [view.model_dump_json(by_alias=True).encode() for view in views]


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    now = utcnow()
    with Session(engine) as session:
        session.add_all(
            RetrainPolicy(
                name=f"p{i}",
                enabled=i % 3 != 0,
                triggers=["manual", "schedule"] if i % 2 else ["manual"],
                cron="0 3 * * *" if i % 2 else None,
                dataset_selector={"names": [], "glob": "faces-*", "tags": ["ü"]},
                verification_sets=["lfw"] * (i % 2),
                base_config={**ODD_JSON, "steps": i},
                metric_threshold=0.5 if i % 2 else None,
                notify={"webhooks": [], "emails": ["ops@example.com"]},
                pending_trigger="manual" if i == 2 else None,
                pending_since=now if i == 2 else None,
                pending_events=[{"kind": "manual", "at": now.isoformat()}] * i,
                next_cron_at=now + timedelta(hours=i),
            )
            for i in range(7)
        )
        session.add_all(
            Device(
                name=f"d{i}",
                group="lobby" if i % 2 else "gate",
                status="active",
                health={"users": i, "temp": 36.6 + i / 10, "note": "ok ✓"} if i % 3 else {},
                last_seen_at=now if i % 2 else None,
                agent_version="1.0" if i % 2 else None,
            )
            for i in range(7)
        )
        dataset = Dataset(name="faces-a", kind="train")
        session.add(dataset)
        session.flush()
        versions = [
            DatasetVersion(
                dataset_id=dataset.id, version=v, source_uri="x", format="imagefolder", content_hash=f"h{v}"
            )
            for v in (1, 2)
        ]
        session.add_all(versions)
        run_rows = [
            Run(
                name=f"r{i}",
                status="succeeded" if i % 2 else "queued",
                trigger="manual" if i % 3 else "schedule",
                created_by="alice" if i % 2 else "bob",
                config={**ODD_JSON, "steps": 100 + i},
                summary={"lfw": {"accuracy": 0.9 + i / 100}} if i % 2 else {},
                progress=i / 7,
                eta_seconds=None if i % 2 else 12.5,
                started_at=now if i % 2 else None,
            )
            for i in range(7)
        ]
        session.add_all(run_rows)
        session.flush()
        for i, run in enumerate(run_rows):
            for position, version in enumerate(versions[: i % 3]):
                session.add(
                    RunDataset(
                        run_id=run.id,
                        position=position,
                        role="train" if position == 0 else "verification",
                        dataset_version_id=version.id,
                        class_offset=10 * position,
                        num_classes=10,
                    )
                )
        models = [
            ModelVersion(name=name, version=v, card_sha256="0" * 64) for name in ("a", "b") for v in (1, 2)
        ]
        session.add_all(models)
        session.flush()
        session.add(ModelAlias(name="a", alias="production", model_version_id=models[0].id))
        session.commit()
    return engine


def test_policy_pages_and_items_match_the_orm(seeded: Engine) -> None:
    with Session(seeded) as session, seeded.connect() as conn:
        for limit, offset, after in PAGES:
            for enabled in (None, True, False):
                orm, orm_total = policies.list_policies(
                    session, limit=limit, offset=offset, enabled=enabled, after=after
                )
                core, core_total = policies.list_policy_views(
                    conn, limit=limit, offset=offset, enabled=enabled, after=after
                )
                assert _dumped(core) == _dumped([PolicyRead.model_validate(p) for p in orm])
                assert core_total == orm_total
        for policy in session.scalars(select(RetrainPolicy)):
            assert _dumped([policies.get_policy_view(conn, policy_id=policy.id)]) == _dumped(
                [PolicyRead.model_validate(policy)]
            )
        with pytest.raises(NotFoundError, match="does not exist") as missing:
            policies.get_policy_view(conn, policy_id=10**6)
        assert missing.value.field == "policy_id"


def test_device_pages_match_the_orm(seeded: Engine) -> None:
    with Session(seeded) as session, seeded.connect() as conn:
        for limit, offset, after in PAGES:
            for group in (None, "lobby", "nowhere"):
                orm, orm_total = devices.list_devices(
                    session, group=group, limit=limit, offset=offset, after=after
                )
                core, core_total = devices.list_device_views(
                    conn, group=group, limit=limit, offset=offset, after=after
                )
                assert _dumped(core) == _dumped([DeviceRead.model_validate(d) for d in orm])
                assert core_total == orm_total


def _orm_runs(session: Session, filters: dict[str, Any], limit: int, offset: int, after: int | None) -> Any:
    """What GET /v1/runs built before: the filtered ORM query, then run_views."""
    stmt = select(Run)
    for name, value in filters.items():
        stmt = stmt.where(getattr(Run, name) == value)
    rows, total = fetch_page(
        session,
        stmt.order_by(Run.id.desc()),
        limit=limit,
        offset=offset,
        after=after,
        key=Run.id,
        descending=True,
    )
    return runs.run_views(session, rows), total


@pytest.mark.parametrize(
    "filters",
    [{}, {"status": "succeeded"}, {"trigger": "schedule", "created_by": "bob"}, {"policy_id": 1}],
)
def test_run_pages_match_the_orm(seeded: Engine, filters: dict[str, Any]) -> None:
    with Session(seeded) as session, seeded.connect() as conn:
        for limit, offset, after in PAGES:
            orm, orm_total = _orm_runs(session, filters, limit, offset, after)
            core, core_total = listing.list_run_views(
                conn,
                filters={**filters, "created_by": filters.get("created_by")},
                limit=limit,
                offset=offset,
                after=after,
            )
            assert _dumped(core) == _dumped(orm)
            assert core_total == orm_total
        assert any(view.datasets for view in core) or filters


def test_model_summaries_on_a_connection_match_the_session(seeded: Engine) -> None:
    with Session(seeded) as session, seeded.connect() as conn:
        assert registry.list_models(conn) == registry.list_models(session)
        assert registry.list_models(conn)[0].aliases == {"production": 1}


def _comparable(view: PolicyRead) -> dict[str, Any]:
    return view.model_dump(mode="json", exclude={"id", "name", "created_at"})


@pytest.mark.parametrize("fires", [1, 3])
def test_fire_in_core_makes_the_orm_change(seeded: Engine, fires: int) -> None:
    """fire_policy_audited (Core) and request_fire (ORM) leave the same row, answer and audit event."""
    with Session(seeded, expire_on_commit=False) as session:
        now = utcnow()
        twins = [
            RetrainPolicy(
                name=f"twin-{side}",
                triggers=["manual"],
                base_config=ODD_JSON,
                debounce_seconds=60,
                pending_trigger="dataset_added",
                pending_since=now,
                pending_events=[{"kind": "dataset_added", "at": now.isoformat(), "dataset": "faces-a"}],
            )
            for side in ("core", "orm")
        ]
        session.add_all(twins)
        session.commit()
        core_id, orm_id = twins[0].id, twins[1].id
        held = session.get(RetrainPolicy, core_id)  # a row the session already holds must not go stale
        assert held is not None
        for _ in range(fires):
            answer = policies.fire_policy_audited(session, core_id, actor="key:1:root")
            at = datetime.fromisoformat(answer.pending_events[-1]["at"])
            orm = policies.request_fire(session, policy_id=orm_id, requested_by="key:1:root", now=at)
        assert held.pending_events == answer.pending_events  # expired and reloaded
        session.commit()
    with Session(seeded) as session:
        stored = {p.id: PolicyRead.model_validate(p) for p in session.scalars(select(RetrainPolicy))}
        assert (
            _comparable(stored[core_id]) == _comparable(answer) == _comparable(PolicyRead.model_validate(orm))
        )
        assert _comparable(stored[core_id]) == _comparable(stored[orm_id])
        assert answer.pending_trigger == "manual" and len(answer.pending_events) == 1 + fires
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "policies.fire")).all()
        assert [(e.actor, e.target_type, e.target_id, e.details) for e in events] == [
            ("key:1:root", "policy", str(core_id), {})
        ] * fires


def test_fire_in_core_refuses_like_the_orm(seeded: Engine) -> None:
    with Session(seeded) as session:
        disabled = session.scalars(select(RetrainPolicy).where(RetrainPolicy.name == "p0")).one()
        with pytest.raises(ConflictError, match="'p0' is disabled") as refused:
            policies.fire_policy_audited(session, disabled.id, actor="t")
        with pytest.raises(ConflictError) as orm_refused:
            policies.request_fire(session, policy_id=disabled.id, requested_by="t")
        assert (refused.value.message, refused.value.field) == (orm_refused.value.message, "policy_id")
        with pytest.raises(NotFoundError) as missing:
            policies.fire_policy_audited(session, 10**6, actor="t")
        assert missing.value.field == "policy_id"
