"""`facefleet db ...`: schema migrations."""

from __future__ import annotations

import typer

from facefleet.commands._output import make_console
from facefleet.platform.db import migrate
from facefleet.platform.settings import get_settings, mask_url_password

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
console = make_console()


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    url = get_settings().effective_database_url
    migrate.upgrade(url, revision)
    console.print(f"database {mask_url_password(url)} is at {revision}")


@app.command("downgrade")
def downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Revert migrations down to REVISION."""
    url = get_settings().effective_database_url
    migrate.downgrade(url, revision)
    console.print(f"database {mask_url_password(url)} is at {revision}")
