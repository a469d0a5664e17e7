"""Issue 11 item 2: confirmed writes must survive a restart after the database file was offered as a source.

Closing any descriptor of a SQLite file drops every POSIX lock the process holds on it. The API used to
open the file while inspecting the source; then another process closing its connection believed it was
the last one, checkpointed and deleted the write-ahead log under the API, and later commits were lost.
This replays the sequence against a real `facefleet serve` process and real CLI processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import free_port

CLI = [sys.executable, "-m", "facefleet.cli"]


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEFLEET_")}
    env.update(
        FACEFLEET_DATA_DIR=str(tmp_path / "data"),
        FACEFLEET_DATASET_ROOTS=json.dumps([str(tmp_path)]),  # the data dir is inside an allowed root
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[3]), env.get("PYTHONPATH", "")]),
    )
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class ApiProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.port = env, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--port", str(self.port), "--no-access-log"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the API did not start:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def api_process(environment: dict[str, str], tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(environment, tmp_path / "api.log")
    yield api
    api.stop()


def _another_process_opens_and_closes(env: dict[str, str], database: Path) -> None:
    _cli(env, "keys", "list")  # the CLI: SQLAlchemy opens, reads and closes the database
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('select count(*) from api_keys').fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(database)], check=True, timeout=60)


@pytest.mark.slow  # two API start-ups and five CLI processes: about a minute on 2 CPUs
def test_offering_the_database_as_a_source_loses_no_confirmed_write(
    environment: dict[str, str], api_process: ApiProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    token = _cli(environment, "keys", "create", "--role", "admin", "--name", "ops").strip().splitlines()[-1]
    database = data / "facefleet.db"
    assert database.is_file()
    folder = tmp_path / "faces" / "id0"
    folder.mkdir(parents=True)
    os.link(database, folder / "0.jpg")  # the same file under another name
    api_process.start()
    headers = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=api_process.url, headers=headers, timeout=60)

    for source in (str(database), str(data), str(tmp_path / "faces"), f"{data}/../data/facefleet.db"):
        refused = client.post("/v1/datasets", json={"name": "x", "source": source})
        assert 400 <= refused.status_code < 500, (source, refused.text)
    confirmed: list[str] = []
    for round_ in range(2):
        _another_process_opens_and_closes(environment, database)
        policy = client.post("/v1/policies", json={"name": f"p{round_}", "triggers": ["manual"]})
        assert policy.status_code == 201, policy.text
        device = client.post("/v1/devices", json={"name": f"kiosk{round_}", "group": "front"})
        assert device.status_code == 201, device.text
        confirmed.append(f"p{round_}")
    assert [p["name"] for p in client.get("/v1/policies").json()["items"]] == sorted(confirmed)
    client.close()

    api_process.stop()
    _another_process_opens_and_closes(environment, database)
    with sqlite3.connect(database) as check:
        assert check.execute("pragma integrity_check").fetchone() == ("ok",)
    api_process.start()
    with httpx.Client(base_url=api_process.url, headers=headers, timeout=60) as client:
        policies = client.get("/v1/policies")
        assert policies.status_code == 200, policies.text
        assert sorted(p["name"] for p in policies.json()["items"]) == sorted(confirmed)
        devices = client.get("/v1/devices").json()["items"]
        assert sorted(d["name"] for d in devices) == ["kiosk0", "kiosk1"]
        actions = [e["action"] for e in client.get("/v1/audit", params={"limit": 100}).json()["items"]]
        assert actions.count("policies.create") == 2 and actions.count("devices.register") == 2
        assert actions.count("datasets.register_failed") == 4
