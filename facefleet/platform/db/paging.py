"""Limit/offset paging of a query: one page of rows plus the count of every row that matches."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")


def fetch_page(session: Session, stmt: Select[T], *, limit: int, offset: int) -> tuple[list[T], int]:
    """Run an ordered ``stmt`` for one page and count all matching rows (the count ignores the order)."""
    count: Select[Any] = select(func.count()).select_from(stmt.order_by(None).subquery())
    total = session.scalar(count) or 0
    rows = session.scalars(stmt.limit(limit).offset(offset)).all()
    return list(rows), int(total)
