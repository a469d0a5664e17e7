"""How commands print: rich tables on a terminal, never cut when piped, and `--json` for scripts."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

# Piped output (`facefleet runs list | cat`, a script) is never wrapped or cut at 80 columns.
PIPE_WIDTH = 100_000

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON (the API's shapes and field names) instead of a table.")
]


def make_console(*, stderr: bool = False) -> Console:
    """A console for a command's output: the terminal's width on a terminal, unlimited when piped."""
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return Console(stderr=stderr, width=None if terminal else PIPE_WIDTH, soft_wrap=not terminal)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    """Exactly one JSON document on stdout (no rich markup, no wrapping)."""
    typer.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False, default=str))


def stored_location(key: str) -> str:
    """Where a store key is for the user in local mode: a file path, or the s3:// URI."""
    from urllib.parse import unquote, urlparse

    from facefleet.platform.settings import get_settings

    url = get_settings().effective_store_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from pathlib import Path

        return str(Path(unquote(parsed.path)) / key)
    return f"{url.rstrip('/')}/{key}"


def api_url(base_url: str, path: str) -> str:
    """A full URL of an API path (what a remote user can open with their key)."""
    return f"{base_url.rstrip('/')}{path}"
