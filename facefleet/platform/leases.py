"""Database leases: a named row that one owner holds until it expires, for work only one process may do."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from facefleet.platform.db.models import Lease


def acquire_lease(session: Session, *, name: str, owner: str, ttl_seconds: float, now: datetime) -> bool:
    """Take or renew ``name`` for ``owner`` if it is free, expired or already ours; True when held.

    A conditional UPDATE is atomic on both databases; the INSERT for a new lease races safely on the
    primary key (the loser gets IntegrityError and does not hold the lease). Runs in its own SAVEPOINT so
    a lost race does not spoil the caller's transaction.
    """
    expires = now + timedelta(seconds=ttl_seconds)
    with session.begin_nested():
        result = session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.owner == owner, Lease.expires_at < now))
            .values(owner=owner, expires_at=expires)
            .execution_options(synchronize_session=False)
        )
    if result.rowcount:  # type: ignore[attr-defined]
        return True
    try:
        with session.begin_nested():
            session.add(Lease(name=name, owner=owner, expires_at=expires))
            session.flush()
    except IntegrityError:
        return False
    return True
