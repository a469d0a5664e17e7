"""Run Alembic migrations programmatically (CLI `facefleet db upgrade`, tests, the API on start)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic.config import Config

from alembic import command


def alembic_dir() -> Path:
    """The top-level ``alembic/`` folder (next to the package in a checkout or the image)."""
    override = os.environ.get("FACEFLEET_ALEMBIC_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "alembic"


def alembic_config(url: str) -> Config:
    folder = alembic_dir()
    cfg = Config()
    cfg.set_main_option("script_location", str(folder))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
