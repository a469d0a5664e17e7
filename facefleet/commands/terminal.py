"""`facefleet terminal ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="terminal commands", no_args_is_help=True)
