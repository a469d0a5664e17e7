"""Custom actions on a resource (``POST /things/{id}:cancel``), also reachable as ``/things/{id}/cancel``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def add_action_route(
    router: APIRouter,
    resource_path: str,
    action: str,
    endpoint: Callable[..., Any],
    *,
    name: str,
    **options: Any,
) -> None:
    """Register ``{resource_path}:{action}`` (documented) and the ``/{action}`` spelling (hidden alias)."""
    router.add_api_route(f"{resource_path}:{action}", endpoint, methods=["POST"], name=name, **options)
    hidden = {key: value for key, value in options.items() if key != "summary"}
    router.add_api_route(
        f"{resource_path}/{action}",
        endpoint,
        methods=["POST"],
        name=f"{name}_alias",
        include_in_schema=False,
        **hidden,
    )
