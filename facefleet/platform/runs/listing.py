"""GET /v1/runs from Core rows: a page of RunView in two statements (the runs, then their datasets).

The same views as ``service.run_views`` over the ORM (``tests/platform/test_db_views.py`` compares them on
both databases), without loading entities: the page statement is built once per combination of filters.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, select

from facefleet.platform.db.models import Dataset, DatasetVersion, Run, RunDataset
from facefleet.platform.db.views import PageQuery, RowView
from facefleet.platform.runs.schemas import RunView

FILTERS = ("status", "trigger", "policy_id", "created_by")  # the list's filters, each a Run column

_VIEW = RowView(RunView, Run.__table__, exclude=("datasets",))  # type: ignore[arg-type]
_DATASETS = (
    select(
        RunDataset.run_id,
        RunDataset.position,
        RunDataset.role,
        RunDataset.dataset_version_id,
        Dataset.name,
        DatasetVersion.version,
        RunDataset.class_offset,
        RunDataset.num_classes,
    )
    .join(DatasetVersion, RunDataset.dataset_version_id == DatasetVersion.id)
    .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
    .where(RunDataset.run_id.in_(bindparam("run_ids", expanding=True)))
    .order_by(RunDataset.run_id, RunDataset.position)
)


@cache
def _page_query(filters: frozenset[str]) -> PageQuery:
    stmt = _VIEW.select()
    for name in FILTERS:
        if name in filters:
            stmt = stmt.where(Run.__table__.c[name] == bindparam(name))
    return PageQuery(stmt.order_by(Run.id.desc()), key=Run.id, descending=True)


def list_run_views(
    conn: Connection,
    *,
    filters: Mapping[str, Any],
    limit: int,
    offset: int,
    after: int | None = None,
) -> tuple[list[RunView], int | None]:
    """Runs newest first matching ``filters`` (FILTERS names; None values are ignored), with datasets."""
    params = {name: value for name, value in filters.items() if value is not None}
    rows, total = _page_query(frozenset(params)).fetch(conn, params, limit=limit, offset=offset, after=after)
    items = _VIEW.dicts(rows)
    by_run: dict[int, list[dict[str, Any]]] = {item["id"]: [] for item in items}
    for item in items:
        item["datasets"] = by_run[item["id"]]
    if by_run:
        for row in conn.execute(_DATASETS, {"run_ids": list(by_run)}):
            by_run[row[0]].append(
                {
                    "position": row[1],
                    "role": row[2],
                    "dataset_version_id": row[3],
                    "dataset": row[4],
                    "version": row[5],
                    "class_offset": row[6],
                    "num_classes": row[7],
                }
            )
    return _VIEW.models(items), total
