"""Pagination shared by every list route: ``limit``/``offset``, and ``after`` (keyset) on the big tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.db.paging import COUNT_CAP, KeyColumn, fetch_page

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

T = TypeVar("T")


class PageParams(BaseModel):
    limit: int
    offset: int
    after: int | None = None


# Async: pure computation, so FastAPI calls it in the event loop instead of hopping to a worker thread.
async def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (1-{MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX, description="items to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


async def keyset_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (1-{MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX, description="items to skip")] = 0,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=DB_INT_MAX,
            description="start after this id (the previous page's next_after): as fast on page 10,000 as "
            "on page 1, unlike a large offset",
        ),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, offset=offset, after=after)


Pagination = Annotated[PageParams, Depends(page_params)]
KeysetPagination = Annotated[PageParams, Depends(keyset_params)]


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching the filters, and the page it is."""

    items: list[T]
    total: int | None = Field(
        description=f"items matching the filters; null when more than {COUNT_CAP:,} match (page with 'after')"
    )
    limit: int
    offset: int
    next_after: int | None = Field(
        default=None, description="pass as 'after' for the next page (lists ordered by id; null at the end)"
    )


def make_page(
    items: Sequence[Any],
    total: int | None,
    params: PageParams,
    convert: Callable[[Any], T],
    *,
    key: Callable[[Any], int] | None = None,
) -> Page[T]:
    """A page of ``convert``-ed items; with ``key`` (an item's id), ``next_after`` when the page is full."""
    next_after = key(items[-1]) if key is not None and items and len(items) == params.limit else None
    return Page[T](
        items=[convert(item) for item in items],
        total=total,
        limit=params.limit,
        offset=params.offset,
        next_after=next_after,
    )


def paginate_query(
    session: Session,
    stmt: Select[T],
    params: PageParams,
    *,
    key: KeyColumn | None = None,
    descending: bool = False,
) -> tuple[list[T], int | None]:
    """Run ``stmt`` for one page (it must be ordered, by ``key`` for keyset paging) and count matches."""
    return fetch_page(
        session,
        stmt,
        limit=params.limit,
        offset=params.offset,
        after=params.after,
        key=key,
        descending=descending,
    )


def slice_page(items: Sequence[object], params: PageParams) -> tuple[list, int]:  # type: ignore[type-arg]
    """Paginate a list a service returned whole (small collections only)."""
    return list(items[params.offset : params.offset + params.limit]), len(items)
