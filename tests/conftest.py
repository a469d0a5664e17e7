"""Shared fixtures: both databases (migrated by Alembic), both stores, isolated settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.platform.db import migrate
from facefleet.platform.db.session import make_engine
from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store import ObjectStore
from facefleet.platform.store.local import LocalStore
from facefleet.platform.store.s3 import S3Store
from tests.fixtures.ray_cluster import RayCluster, ray_cluster  # noqa: F401
from tests.fixtures.servers import PostgresServer, S3Server, postgres_server, s3_server  # noqa: F401

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own data dir; nothing leaks from the developer's environment."""
    for name in list(os.environ):
        if name.startswith("FACEFLEET_") and name != "FACEFLEET_REQUIRE_SERVERS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("FACEFLEET_DATA_DIR", str(tmp_path / "facefleet-data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind (not yet migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def engine(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A migrated database of each kind; FACEFLEET_DATABASE_URL points at it."""
    migrate.upgrade(database_url)
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", database_url)
    get_settings.cache_clear()
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the migrated database; the test decides when to commit."""
    with Session(engine, expire_on_commit=False) as sess:
        yield sess
        sess.rollback()


@pytest.fixture
def sqlite_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """Only SQLite (for tests where the second database adds nothing but time)."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    migrate.upgrade(url)
    monkeypatch.setenv("FACEFLEET_DATABASE_URL", url)
    get_settings.cache_clear()
    eng = make_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """An empty store of each kind; FACEFLEET_STORE_URL (and the endpoint) point at it."""
    if request.param == "local":
        root = tmp_path / "store"
        monkeypatch.setenv("FACEFLEET_STORE_URL", root.resolve().as_uri())
        get_settings.cache_clear()
        return LocalStore(root)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("FACEFLEET_STORE_URL", f"s3://{bucket}/facefleet")
    monkeypatch.setenv("FACEFLEET_S3_ENDPOINT_URL", server.endpoint_url)
    get_settings.cache_clear()
    return S3Store(bucket, "facefleet", endpoint_url=server.endpoint_url)


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    root = tmp_path / "store"
    monkeypatch.setenv("FACEFLEET_STORE_URL", root.resolve().as_uri())
    get_settings.cache_clear()
    return LocalStore(root)


@pytest.fixture
def settings() -> Settings:
    return get_settings()
