"""Undo the store writes of a transaction that does not commit.

A use case writes objects before its caller commits the rows that name them. When that commit fails (or the
caller rolls back, or closes the session without committing), the objects would stay behind, named by no
row. ``on_rollback`` registers a callback that deletes them: it runs once, when the session's outermost
transaction ends without a commit; a commit drops it. Savepoints (``begin_nested``) neither run nor drop
callbacks. A callback that fails is logged, never raised (the caller's own error is the one to report).

Callbacks run after the database rolled back, so the rows that guarded the keys (a version number, an
attempt id) are released by then: a callback deletes only keys no other transaction can have written
(attempts: a folder of their own per write) or holds the slot while deleting (dataset versions; see
``datasets.service.discard_unclaimed_version``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)
KEY = "facefleet.on_rollback"


def engine_of(session: Session) -> Engine:
    """The engine behind ``session`` (callbacks open their own session on it: the caller's is gone)."""
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def on_rollback(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` if the session's current (outermost) transaction ends without a commit."""
    session.info.setdefault(KEY, []).append(callback)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if not session.in_nested_transaction():  # the outermost transaction committed: keep what it wrote
        session.info.pop(KEY, None)


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None or transaction.nested:
        return
    for callback in session.info.pop(KEY, []):  # still here: the transaction ended without a commit
        try:
            callback()
        except Exception:  # noqa: BLE001 - cleanup is best effort; the caller's error is the one to raise
            log.exception("could not undo the store writes of a transaction that did not commit")
