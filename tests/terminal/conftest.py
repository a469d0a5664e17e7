"""Fixtures for terminal tests: the real API served by uvicorn on a free loopback port, an admin key."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from facefleet.api.app import create_app
from facefleet.platform import auth
from facefleet.platform.store import ObjectStore


@dataclass
class LiveApi:
    url: str
    engine: Engine
    store: ObjectStore
    admin_key: str

    def session(self) -> Session:
        return sessionmaker(bind=self.engine, expire_on_commit=False)()


@pytest.fixture
def live_api(sqlite_engine: Engine, local_store: ObjectStore) -> Iterator[LiveApi]:
    app = create_app(engine=sqlite_engine, store=local_store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    with Session(sqlite_engine) as session:
        _key, token = auth.create_api_key(session, name="test-admin", role="admin")
        session.commit()
    yield LiveApi(f"http://127.0.0.1:{port}", sqlite_engine, local_store, token)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
