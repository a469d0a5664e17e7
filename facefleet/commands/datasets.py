"""`facefleet datasets ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="datasets commands", no_args_is_help=True)
