"""Bounded id parameters: a number no row can have is a 422 naming the field, never a database overflow."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from facefleet.platform.db.base import DB_INT_MAX

ID_HELP = f"a positive id (1-{DB_INT_MAX})"

PathId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description=ID_HELP)]
QueryId = Annotated[int, Query(ge=1, le=DB_INT_MAX, description=ID_HELP)]
