"""Answer with a pydantic model serialized once, in Rust, skipping FastAPI's second validation.

A route that returns a model object makes FastAPI validate it again against ``response_model`` and then
serialize it (in a worker thread for sync routes): for a page of 20 policies that was about a third of the
request's CPU. Routes keep ``response_model`` for the OpenAPI schema and return ``model_response(...)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Response
from pydantic import BaseModel


def model_response(
    model: BaseModel, *, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``model`` as JSON (field aliases, like FastAPI's own serialization)."""
    return Response(
        content=model.model_dump_json(by_alias=True),
        status_code=status_code,
        headers=dict(headers) if headers else None,
        media_type="application/json",
    )
