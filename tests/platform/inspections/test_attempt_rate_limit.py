"""The per-device hourly attempt limit holds under concurrent uploads, on SQLite and PostgreSQL: the count
and the insert are one step per device (no two uploads both read "one below the limit" and both store)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Attempt, Device
from facefleet.platform.inspections import service as inspections
from facefleet.platform.store import ObjectStore
from tests.platform.inspections.factories import attempt_body, collect, give, make_device, make_version

LIMIT = 3
UPLOADS = 8


def test_concurrent_uploads_store_no_more_than_the_limit(
    engine: Engine, local_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Session(engine, expire_on_commit=False) as session:
        door, other = make_device(session, "door-1"), make_device(session, "gate-1")
        version = make_version(session)
        give(session, door, version)
        give(session, other, version)
        collect(session, attempts="all")
        session.commit()
        door_id, other_id, version_id = door.id, other.id, version.id

    # Widen the window between the rate check and the insert (decoding the crops sits in it), so that
    # uploads that are not serialised all read a count below the limit.
    checked = inspections._checked_crop

    def slow_crop(*args: Any) -> bytes:
        time.sleep(0.1)
        return checked(*args)

    monkeypatch.setattr(inspections, "_checked_crop", slow_crop)
    start = threading.Barrier(UPLOADS + 1)
    outcomes: list[str] = []
    lock = threading.Lock()

    def upload(seed: int, device_id: int) -> None:
        with Session(engine, expire_on_commit=False) as session:
            device = session.get(Device, device_id)
            assert device is not None
            start.wait()
            try:
                inspections.record_attempt(
                    session,
                    local_store,
                    device,
                    attempt_body(version_id, seed),
                    max_bytes=64 * 1024,
                    rate_per_hour=LIMIT,
                )
                session.commit()
                outcome = "stored"
            except inspections.TooManyAttemptsError:
                session.rollback()
                outcome = "429"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=upload, args=(seed, door_id)) for seed in range(UPLOADS - 1)]
    threads.append(threading.Thread(target=upload, args=(99, other_id)))  # another device: its own limit
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["429"] * (UPLOADS - 1 - LIMIT) + ["stored"] * (LIMIT + 1)
    with Session(engine) as session:
        per_device = dict(
            session.execute(select(Attempt.device_id, func.count()).group_by(Attempt.device_id)).all()
        )
    assert per_device == {door_id: LIMIT, other_id: 1}
    assert len(local_store.list(f"attempts/{door_id}/")) == 2 * LIMIT  # the refused ones stored no crop
