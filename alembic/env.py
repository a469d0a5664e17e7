"""Alembic environment: the URL comes from the caller (facefleet.platform.db.migrate) or the settings."""

from __future__ import annotations

from alembic import context
from facefleet.platform.db import models  # noqa: F401  (registers the tables)
from facefleet.platform.db.base import Base, UTCDateTime
from facefleet.platform.db.session import make_engine
from facefleet.platform.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or get_settings().effective_database_url


def _render_item(kind: str, item: object, autogen_context: object) -> str | bool:
    """UTCDateTime only changes how values are read and written: the column is a plain DateTime."""
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        render_as_batch=True,
        render_item=_render_item,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            render_item=_render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        context.configure(
            connection=conn, target_metadata=target_metadata, render_as_batch=True, render_item=_render_item
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
