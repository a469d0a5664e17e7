"""Read-only API views straight from Core rows: statements built once, JSON parsed in Rust, one validation.

Loading ORM entities for a page of 20 rows (identity map, instance state, JSON decoded by Python's ``json``
per column) and then validating each object into its pydantic view was most of an admin list route's CPU.
Here a view selects exactly its model's fields from the table (JSON columns as their text), parses the JSON
with ``pydantic_core.from_json`` and validates the whole list of rows in one ``TypeAdapter`` call. The
values are the ORM's (same column types: ``UTCDateTime``, ``Boolean``), so the view is the same model the
ORM path builds; ``tests/platform/test_db_views.py`` checks that on both databases.

``PageQuery`` is ``paging.fetch_page`` with every varying part a bound parameter (filters, ``after``,
limit, offset), so its two statements are built once per list and filter combination, not per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter
from pydantic_core import from_json
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Integer,
    Row,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    select,
)

from facefleet.platform.db.paging import KeyColumn, bounded_count_expr, capped_total, page_of

M = TypeVar("M", bound=BaseModel)
PAGE_LIMIT, PAGE_OFFSET, PAGE_AFTER = "_page_limit", "_page_offset", "_page_after"


class RowView(Generic[M]):
    """The columns of ``table`` named like ``model``'s fields, and rows of them turned into ``model``s."""

    def __init__(self, model: type[M], table: Table, *, exclude: Iterable[str] = ()) -> None:
        skipped = set(exclude)
        self.names = [name for name in model.model_fields if name not in skipped]
        self.json_names = [name for name in self.names if isinstance(table.c[name].type, JSON)]
        # JSON as its stored text: parsed below in one Rust call instead of json.loads per column.
        self.columns: list[ColumnElement[Any]] = [
            cast(table.c[name], Text).label(name) if name in self.json_names else table.c[name]
            for name in self.names
        ]
        self._adapter = TypeAdapter(list[model])  # type: ignore[valid-type]

    def select(self) -> Select[Any]:
        return select(*self.columns)

    def dicts(self, rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
        """Each row's leading columns by field name (trailing extras, like a page's count, are dropped)."""
        names, json_names = self.names, self.json_names
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=False))
            for name in json_names:
                text = item[name]
                item[name] = None if text is None else from_json(text)
            out.append(item)
        return out

    def models(self, items: list[dict[str, Any]]) -> list[M]:
        """Validate (as the ORM path's ``model_validate`` does) the whole list in one call."""
        return self._adapter.validate_python(items)


class PageQuery:
    """An ordered ``stmt`` paged like ``paging.fetch_page``, built once: filters are ``bindparam``s."""

    def __init__(self, stmt: Select[Any], *, key: KeyColumn, descending: bool = False) -> None:
        counted = stmt.add_columns(bounded_count_expr(stmt).label("_page_total"))
        limit = bindparam(PAGE_LIMIT, type_=Integer)
        offset = bindparam(PAGE_OFFSET, type_=Integer)
        after = bindparam(PAGE_AFTER, type_=Integer)
        self._first = counted.limit(limit).offset(offset)
        self._after = counted.where(key < after if descending else key > after).limit(limit).offset(offset)
        self._count = select(bounded_count_expr(stmt))

    def fetch(
        self,
        conn: Connection,
        params: Mapping[str, Any],
        *,
        limit: int,
        offset: int,
        after: int | None = None,
    ) -> tuple[Sequence[Row[Any]], int | None]:
        """One page of rows (each ending with the bounded count) and the total matching the filters."""
        bound = {**params, PAGE_LIMIT: limit + 1, PAGE_OFFSET: offset}
        if after is not None:
            bound[PAGE_AFTER] = after
        found = conn.execute(self._first if after is None else self._after, bound).all()
        return page_of(
            found,
            limit=limit,
            offset=offset,
            after=after,
            count=lambda: capped_total(int(conn.execute(self._count, dict(params)).scalar() or 0)),
        )
