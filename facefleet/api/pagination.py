"""Limit/offset pagination shared by every list route."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from facefleet.platform.db.base import DB_INT_MAX
from facefleet.platform.db.paging import fetch_page

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

T = TypeVar("T")


class PageParams(BaseModel):
    limit: int
    offset: int


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"items per page (1-{MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX, description="items to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Pagination = Annotated[PageParams, Depends(page_params)]


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching the filters, and the page it is."""

    items: list[T]
    total: int
    limit: int
    offset: int


def make_page(items: Sequence[Any], total: int, params: PageParams, convert: Callable[[Any], T]) -> Page[T]:
    return Page[T](
        items=[convert(item) for item in items], total=total, limit=params.limit, offset=params.offset
    )


def paginate_query(session: Session, stmt: Select[T], params: PageParams) -> tuple[list[T], int]:
    """Run ``stmt`` for one page (it must be ordered) and count all matching rows."""
    return fetch_page(session, stmt, limit=params.limit, offset=params.offset)


def slice_page(items: Sequence[object], params: PageParams) -> tuple[list, int]:  # type: ignore[type-arg]
    """Paginate a list a service returned whole (small collections only)."""
    return list(items[params.offset : params.offset + params.limit]), len(items)
