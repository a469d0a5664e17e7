"""Faults on real PostgreSQL, with the API as its own process (`facefleet serve`), as deployed.

1. The API is killed (SIGKILL) while a run it started trains: the run still finishes (the worker owns its
   status) and, once the API is back, its row says so.
2. PostgreSQL restarts (fast shutdown, start on the same port) under API load: requests during the outage get
   a clean 503 problem JSON (Retry-After, no trace), the API recovers by itself, no confirmed write is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from facefleet.api.app import create_app
from facefleet.platform import auth
from facefleet.platform.db import migrate
from facefleet.platform.db.models import ApiKey, Run, RunMetric
from facefleet.platform.db.session import make_engine
from facefleet.platform.settings import get_settings
from facefleet.platform.store.local import LocalStore
from tests.fixtures.servers import PostgresServer, free_port, running_postgres
from tests.workers.train_helpers import register_tiny_datasets, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ApiProcess:
    """`facefleet serve` in its own process group, logging to a file."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "facefleet.cli", "serve", "--port", str(port), "--no-access-log"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(self.proc)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the API exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the API did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def _api_environment(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
    env.update(
        FACEFLEET_DATABASE_URL=database_url,
        FACEFLEET_STORE_URL=(tmp_path / "store").resolve().as_uri(),
        FACEFLEET_DATA_DIR=str(tmp_path / "facefleet-data"),
        FACEFLEET_LAUNCHER="local",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[ApiProcess]:
    holder: list[ApiProcess] = []
    yield holder  # type: ignore[misc]
    for api in holder:
        api.close()


def _admin_key(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            _key, token = auth.create_api_key(session, name="faults-admin", role="admin")
            session.commit()
    finally:
        engine.dispose()
    return token


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_run_finishes_and_its_row_is_right_after_the_api_is_killed_mid_training(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_process: list
) -> None:
    url = postgres_server.create_database(f"faults_{uuid.uuid4().hex[:10]}")
    env = _api_environment(url, tmp_path)
    for name in ("FACEFLEET_DATABASE_URL", "FACEFLEET_STORE_URL", "FACEFLEET_DATA_DIR"):
        monkeypatch.setenv(name, env[name])
    get_settings.cache_clear()
    migrate.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        names, verif = register_tiny_datasets(session, LocalStore(tmp_path / "store"), tmp_path / "synth")
        session.commit()
    token = _admin_key(url)
    api = ApiProcess(env, tmp_path / "api.log")
    api_process.append(api)
    api.start()
    steps = 40
    created = httpx.post(
        f"{api.url}/v1/runs",
        headers={"Authorization": f"Bearer {token}"},
        json={"datasets": names, "verification_sets": [verif], "config": tiny_config(steps=steps)},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    run_id, job = created.json()["id"], created.json()["launcher_job_id"]
    worker_pid = int(job)
    try:
        deadline = time.monotonic() + 300
        trained_step = 0
        while time.monotonic() < deadline and not trained_step:  # kill once training has reported a step
            with Session(engine) as session:
                run = session.get(Run, run_id)
                assert run is not None and run.status not in ("succeeded", "failed", "cancelled"), run.error
                trained_step = (
                    session.scalar(
                        select(RunMetric.step)
                        .where(RunMetric.run_id == run_id, RunMetric.name == "loss")
                        .order_by(RunMetric.step.desc())
                        .limit(1)
                    )
                    or 0
                )
            time.sleep(0.2)
        assert 0 < trained_step < steps, f"the run never reported a step before the deadline ({trained_step})"
        api.kill()  # SIGKILL: no shutdown hook runs; the worker is in its own session and keeps going
        print(f"\nAPI killed at training step {trained_step} of {steps}")
        os.kill(worker_pid, 0)  # the worker outlived the API

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with Session(engine) as session:
                run = session.get(Run, run_id)
                if run is not None and run.status in ("succeeded", "failed", "cancelled"):
                    break
            time.sleep(1)
        api.start()  # a fresh API process on the same database
        shown = httpx.get(
            f"{api.url}/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert shown.status_code == 200, shown.text
        row = shown.json()
        log_path = tmp_path / "facefleet-data" / "runs" / f"{run_id}.log"
        log_tail = log_path.read_text(errors="replace")[-3000:]
        assert row["status"] == "succeeded" and row["error"] is None, log_tail
        assert row["finished_at"] and row["started_at"] and row["launcher_job_id"] == job
        assert row["summary"]["model"]["version"] == 1
        metrics = httpx.get(
            f"{api.url}/v1/runs/{run_id}/metrics",
            headers={"Authorization": f"Bearer {token}"},
            params={"names": "loss"},
            timeout=30,
        )
        assert metrics.status_code == 200, metrics.text
        loss_steps = [point["step"] for point in metrics.json()["series"]["loss"]]
        assert loss_steps[-1] == steps and trained_step in loss_steps  # the whole curve, before and after
    finally:
        try:
            os.killpg(worker_pid, signal.SIGKILL)  # only if the test failed with the worker still running
        except ProcessLookupError:
            pass
        engine.dispose()


@dataclass
class Outcome:
    name: str
    sent: float
    status: int  # 0: no HTTP response at all
    media_type: str = ""
    retry_after: str | None = None
    body: str = ""


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A server of its own: this module stops and starts it, which other tests must not see."""
    with running_postgres() as server:
        yield server


def _load(url: str, token: str, prefix: str, stop: threading.Event, out: list[Outcome]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        index = 0
        while not stop.is_set():
            name = f"{prefix}-{index}"
            index += 1
            sent = time.monotonic()
            try:
                response = client.post("/v1/keys", json={"name": name, "role": "viewer"})
            except httpx.TransportError as exc:
                out.append(Outcome(name, sent, 0, body=repr(exc)))
                continue
            out.append(
                Outcome(
                    name,
                    sent,
                    response.status_code,
                    response.headers.get("content-type", ""),
                    response.headers.get("retry-after"),
                    response.text,
                )
            )
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_postgres_restart_under_load_gives_clean_503s_recovers_and_loses_no_confirmed_write(
    own_postgres: PostgresServer, tmp_path: Path, api_process: list
) -> None:
    url = own_postgres.create_database("restart")
    migrate.upgrade(url)
    token = _admin_key(url)
    api = ApiProcess(_api_environment(url, tmp_path), tmp_path / "api.log")
    api_process.append(api)
    api.start()
    stop, outcomes = threading.Event(), [[] for _ in range(3)]
    threads = [
        threading.Thread(target=_load, args=(api.url, token, f"t{i}", stop, outcomes[i]), daemon=True)
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2.0)
        down_at = time.monotonic()
        own_postgres.stop("fast")
        time.sleep(2.0)  # requests keep coming while the database is gone
        own_postgres.start()
        up_at = time.monotonic()
        deadline = up_at + 60
        while time.monotonic() < deadline:
            after = [o for found in outcomes for o in found if o.sent > up_at + 0.5 and o.status == 201]
            if len(after) >= 30:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    everything = [o for found in outcomes for o in found]
    print("\nstatuses:", Counter(o.status for o in everything))

    assert {o.status for o in everything} <= {201, 503}, [
        (o.status, o.body[:300]) for o in everything if o.status not in (201, 503)
    ]
    failed = [o for o in everything if o.status == 503]
    assert failed, "no request met the outage: the test did not test anything"
    assert all(down_at - 0.5 <= o.sent <= up_at + 5 for o in failed), "503s outside the outage window"
    for outcome in failed:
        assert outcome.media_type.startswith("application/problem+json"), outcome.media_type
        assert outcome.retry_after is not None and int(outcome.retry_after) > 0
        problem = httpx.Response(503, content=outcome.body).json()
        assert problem["status"] == 503 and "database is unavailable" in problem["detail"]
        for leak in ("Traceback", "psycopg", "sqlalchemy", 'File "', "SELECT", "INSERT"):
            assert leak not in outcome.body, outcome.body
    # Recovered without a restart of the API: each load thread ends on a run of successes.
    for found in outcomes:
        assert found and all(o.status == 201 for o in found[-5:]), [o.status for o in found[-10:]]
    assert api.proc is not None and api.proc.poll() is None and len(api.started) == 1

    confirmed = {o.name for o in everything if o.status == 201}
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            stored = set(session.scalars(select(ApiKey.name)))
    finally:
        engine.dispose()
    assert confirmed <= stored, f"confirmed writes lost: {sorted(confirmed - stored)}"
    listed: set[str] = set()
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while True:
            page = client.get("/v1/keys", params={"limit": 500, "offset": len(listed)})
            assert page.status_code == 200, page.text
            listed |= {item["name"] for item in page.json()["items"]}
            if len(listed) >= page.json()["total"] or not page.json()["items"]:
                break
    assert confirmed <= listed
    assert "Traceback" not in api.log.read_text(), api.log.read_text()[-3000:]


def test_driver_disconnects_are_503_with_retry_after_and_other_driver_errors_stay_500(
    sqlite_engine: Engine, local_store: LocalStore
) -> None:
    """Fast twin of the restart test: which driver errors mean "the database is unavailable"."""
    app = create_app(get_settings(), engine=sqlite_engine, store=local_store)
    router = APIRouter()
    errors = {
        "refused": OperationalError("SELECT 1", {}, Exception("connection refused")),
        "dropped": InterfaceError(
            "SELECT 1", {}, Exception("the connection is closed"), connection_invalidated=True
        ),
        "bug": ProgrammingError("SELECT secret_column", {}, Exception("syntax error")),
    }

    @router.get("/fail/{kind}")
    def _fail(kind: str) -> None:
        raise errors[kind]

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        for kind in ("refused", "dropped"):
            response = client.get(f"/fail/{kind}")
            assert response.status_code == 503 and response.headers["retry-after"] == "2", response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "SELECT" not in response.text and response.json()["title"] == "Service unavailable"
        bug = client.get("/fail/bug")
        assert bug.status_code == 500 and "secret_column" not in bug.text
