"""Alembic: upgrade from empty, downgrade to base, upgrade again, on SQLite and PostgreSQL; models match."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from facefleet.platform.db import migrate
from facefleet.platform.db.base import Base
from facefleet.platform.db.session import make_engine

EXPECTED_TABLES = {
    "datasets",
    "dataset_versions",
    "outbox_events",
    "runs",
    "run_datasets",
    "run_metrics",
    "model_versions",
    "model_aliases",
    "retrain_policies",
    "leases",
    "devices",
    "deployments",
    "device_deployments",
    "api_keys",
    "audit_events",
    "notifications",
    "collection_settings",
    "attempts",
}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    migrate.upgrade(database_url)
    assert EXPECTED_TABLES <= _tables(database_url)
    migrate.downgrade(database_url, "base")
    assert _tables(database_url) == set()
    migrate.upgrade(database_url)
    assert EXPECTED_TABLES <= _tables(database_url)


def test_models_match_migrations(database_url: str) -> None:
    """The schema changes only through Alembic: the migrated schema equals the ORM models."""
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"ORM models and migrations differ; add a migration: {diff}"
