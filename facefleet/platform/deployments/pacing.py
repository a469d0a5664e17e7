"""Paced rollouts: when a pending device's turn comes (issue 21).

A rollout to 10,000 terminals released at once makes all of them fetch a full assignment, download and
report within one poll interval, on top of the fleet's steady polling: every route queues for seconds. A
deployment's ``release_per_minute`` spreads that: each phase's devices are numbered in device order
(``release_slot``) when the deployment is created, and slot ``k`` is released ``k / rate`` minutes after
its phase began (canaries: at creation; the rest: when the last canary finished). Nothing is written when a
device is released: the decision is a pure function of the row, so a poll stays one SELECT, and a device
whose turn came sees a new ETag on its next poll.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from facefleet.platform.db.base import as_utc, utcnow


class PacedDeployment(Protocol):
    @property
    def release_per_minute(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def rest_released_at(self) -> datetime | None: ...


class PacedRow(Protocol):
    @property
    def phase(self) -> str: ...
    @property
    def release_slot(self) -> int: ...


def turn_has_come(deployment: PacedDeployment, row: PacedRow, now: datetime | None = None) -> bool:
    """``paced_release`` for a device's row of a deployment (ORM objects, or the Core poll's row as both)."""
    if deployment.release_per_minute is None:  # unpaced, the common case: no clock to read
        return True
    return paced_release(
        release_per_minute=deployment.release_per_minute,
        slot=row.release_slot,
        clock_start=phase_start(
            row.phase, created_at=deployment.created_at, rest_released_at=deployment.rest_released_at
        ),
        now=now or utcnow(),
    )


def paced_release(*, release_per_minute: int | None, slot: int, clock_start: datetime, now: datetime) -> bool:
    """Whether slot ``slot``'s turn has come: ``slot / release_per_minute`` minutes after ``clock_start``
    (slot 0 at once; an unpaced deployment releases every slot)."""
    if release_per_minute is None or slot <= 0:
        return True
    elapsed = (as_utc(now) - as_utc(clock_start)).total_seconds()
    return slot * 60.0 <= elapsed * release_per_minute


def phase_start(phase: str, *, created_at: datetime, rest_released_at: datetime | None) -> datetime:
    """When a row's phase began: the rest of a canary rollout when the canaries finished (or, if that was
    never recorded, at creation, like every other phase)."""
    return (rest_released_at if phase == "rest" else None) or created_at
