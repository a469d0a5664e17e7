"""Typer sub-applications of the `facefleet` command, one module per domain."""
