"""Plumbing shared by the admin commands: `--server` (remote API) or a local session, and clean errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated, NoReturn, TypeVar
from urllib.parse import quote

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape
from sqlalchemy.orm import Session

from facefleet.client import FacefleetClient, remote_client
from facefleet.commands._output import make_console
from facefleet.platform.errors import FacefleetError, InvalidInputError

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="API URL (remote mode; key from FACEFLEET_API_KEY; default FACEFLEET_SERVER_URL). "
        "Without it: the local database and store.",
        show_default=False,
    ),
]
error_console = make_console(stderr=True)
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")


def fail(error: FacefleetError | ValueError) -> NoReturn:
    """One line `error: what to fix (field: x)` on stderr and exit code 1; never a traceback."""
    message = error.message if isinstance(error, FacefleetError) else str(error)
    field = getattr(error, "field", None)
    suffix = f" (field: {field})" if field and field not in message else ""
    error_console.print(f"[red]error:[/red] {escape(message + suffix)}", soft_wrap=True)
    raise typer.Exit(code=1)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad input, 4xx from the server, unreachable server) into `fail`."""
    try:
        yield
    except (FacefleetError, ValueError) as error:
        fail(error)


@contextmanager
def connect(server: str | None) -> Iterator[FacefleetClient | None]:
    """A client in remote mode (`--server` or FACEFLEET_SERVER_URL), else None: use `local_session`."""
    client = remote_client(server)
    if client is None:
        yield None
        return
    with client:
        yield client


def local_session() -> AbstractContextManager[Session]:
    """A committing session on the local database, migrated first (embedded mode: schema follows code)."""
    from facefleet.platform.db import migrate
    from facefleet.platform.db.session import session_scope
    from facefleet.platform.settings import get_settings

    migrate.upgrade(get_settings().effective_database_url)
    return session_scope()


def remote_or_local(
    server: str | None,
    remote: Callable[[FacefleetClient], ResultT],
    local: Callable[[Session], ResultT],
) -> ResultT:
    """A command's one operation: ``remote(client)`` in remote mode, else ``local(session)`` in a committing
    local session (return pydantic views, not ORM rows); errors a user can fix end as `fail`."""
    with reported_errors(), connect(server) as client:
        if client is not None:
            return remote(client)
        with local_session() as session:
            return local(session)


def validated(schema: type[ModelT], **fields: object) -> ModelT:
    """The request body both modes send, checked here so local mode refuses what the API would."""
    try:
        return schema.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidInputError(f"{where}: {first['msg']}", field=where) from None


def segment(value: object) -> str:
    """A URL path segment (names and aliases typed by the user must not change the route)."""
    return quote(str(value), safe="")
