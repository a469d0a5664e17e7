"""Paging of a query: one page of rows plus a count of the matching rows that stays cheap on big tables.

The count is skipped when the page itself tells the total (a short page) and is bounded otherwise
(``COUNT_CAP``): counting a million audit events on every request would make list latency grow with the
table. Past the cap the total is ``None``; clients page on with ``after`` (keyset: the last id seen), which
costs the same on the first and the millionth page, unlike a large ``offset``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Row, Select, func, literal, select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")
KeyColumn = ColumnElement[int] | InstrumentedAttribute[int]  # the id column a list is ordered by
COUNT_CAP = 1_000


def fetch_page(
    session: Session,
    stmt: Select[T],
    *,
    limit: int,
    offset: int,
    after: int | None = None,
    key: KeyColumn | None = None,
    descending: bool = False,
) -> tuple[list[T], int | None]:
    """Run an ordered ``stmt`` for one page; the total matching the filters (``None`` past ``COUNT_CAP``).

    With ``after`` and ``key`` (the id column ``stmt`` is ordered by), the page starts after that id.
    """
    page = stmt
    if after is not None:
        if key is None:
            raise ValueError("keyset paging needs the key column")
        page = page.where(key < after if descending else key > after)
    # One round trip: the page (one more row: is there a next?) with the bounded count of everything the
    # filters match beside each row (an uncorrelated scalar subquery, evaluated once per statement).
    counted = page.add_columns(bounded_count_expr(stmt).label("_page_total"))
    found = session.execute(counted.limit(limit + 1).offset(offset)).all()
    rows, total = page_of(
        found, limit=limit, offset=offset, after=after, count=lambda: bounded_count(session, stmt)
    )
    return [row[0] for row in rows], total


def page_of(
    found: Sequence[Row[Any]],
    *,
    limit: int,
    offset: int,
    after: int | None,
    count: Callable[[], int | None],
) -> tuple[Sequence[Row[Any]], int | None]:
    """The page among ``found`` (``limit + 1`` rows, each ending with the bounded count) and the total.

    ``count`` is called only for a page past the end, where no row carried the count.
    """
    total = capped_total(int(found[0][-1])) if found else None
    if len(found) <= limit:
        if after is None and (found or offset == 0):
            return found, offset + len(found)  # the last page: everything up to its end was seen
        return found, total if found else count()
    return found[:limit], total


def bounded_count_expr(stmt: Select[Any], cap: int = COUNT_CAP) -> Any:
    """``count(*)`` of at most ``cap + 1`` rows ``stmt`` matches, as a scalar subquery."""
    # Only a constant per row: PostgreSQL can answer from an index without reading the rows' columns.
    ones = stmt.with_only_columns(literal(1), maintain_column_froms=True)
    capped = ones.order_by(None).limit(cap + 1).subquery()
    return select(func.count()).select_from(capped).scalar_subquery()


def capped_total(total: int, cap: int = COUNT_CAP) -> int | None:
    return None if total > cap else total


def bounded_count(session: Session, stmt: Select[Any], cap: int = COUNT_CAP) -> int | None:
    """How many rows ``stmt`` matches, reading at most ``cap + 1`` of them; ``None`` when more match."""
    return capped_total(int(session.scalar(select(bounded_count_expr(stmt, cap))) or 0), cap)
