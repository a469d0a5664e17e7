"""Parity of the two transports: every write route and its CLI command (local mode) run one use case.

Two identical worlds (database + store): the same `facefleet ...` command runs against world A through
the API (``--server``: the route) and against world B locally (the use case called directly). After each
step both worlds must hold the same new audit events and the same rows in every table (timestamps, hashes
and secrets aside; the API's actor is read as ``cli``). Write routes without a CLI command are compared
with a direct call of the use case their route calls. A new write route fails
``test_every_write_route_is_covered`` until it is added here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import DateTime, Engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from facefleet.api.app import create_app
from facefleet.cli import app as cli_app
from facefleet.platform.auth import create_api_key
from facefleet.platform.datasets import service as datasets
from facefleet.platform.db import migrate
from facefleet.platform.db.base import Base
from facefleet.platform.db.models import AuditEvent, Dataset, DatasetVersion, Device, ModelVersion, Run
from facefleet.platform.db.session import make_engine
from facefleet.platform.devices import service as devices
from facefleet.platform.inspections import service as inspections
from facefleet.platform.models import service as models
from facefleet.platform.runs import service as runs
from facefleet.platform.settings import get_settings
from facefleet.platform.store.local import LocalStore
from facefleet.terminal.demo import serve_in_background
from facefleet.workers.synthetic import generate_synthetic_datasets
from tests.platform.inspections.factories import attempt_body
from tests.workers.train_helpers import tiny_config

runner = CliRunner()
API_ACTOR = "key:1:root"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# The terminal's own endpoints: a device credential, not an admin, calls them; there is no CLI command.
TERMINAL_ROUTES = {
    ("POST", "/v1/device/enroll"),
    ("POST", "/v1/device/status"),
    ("POST", "/v1/device/heartbeat"),
    # A terminal uploads an attempt for inspection (device credential, no CLI command); the parity steps
    # below record the same attempts in both worlds with the route's use case, `record_attempt`.
    ("POST", "/v1/device/attempts"),
}


@dataclass
class World:
    url: str
    engine: Engine
    store: LocalStore
    data_dir: Path

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FACEFLEET_DATABASE_URL", self.url)
        monkeypatch.setenv("FACEFLEET_STORE_URL", self.store.root.resolve().as_uri())
        monkeypatch.setenv("FACEFLEET_DATA_DIR", str(self.data_dir))
        get_settings.cache_clear()


def _fake_start(session: Session, run: Run, launcher: object = None) -> Run:
    """The launcher's part, without training: a job id, or a refusal for runs named 'doomed'."""
    if run.name == "doomed":
        raise RuntimeError("no cluster answers")
    run.launcher_job_id = f"job-{run.id}"
    session.flush()
    return run


def _record_attempts(world: World, device_id: int, seeds: tuple[int, ...]) -> None:
    """The same attempts in a world, as ``POST /v1/device/attempts`` records them (its use case); one per
    seed, crops and score from the seed."""
    settings = get_settings()
    with Session(world.engine) as session:
        device = session.get(Device, device_id)
        assert device is not None
        for seed in seeds:
            inspections.record_attempt(
                session,
                world.store,
                device,
                attempt_body(1, seed, score=0.3 + seed / 100),  # faces v1, deployed to the lobby
                max_bytes=settings.attempt_max_bytes,
                rate_per_hour=settings.attempt_rate_per_hour,
            )
        session.commit()


def _seed(world: World, synthetic: Path) -> str:
    """Identical starting state: an admin key, datasets, two signed model versions, a device."""
    with Session(world.engine) as session:
        _, token = create_api_key(session, name="root", role="admin")
        for name in ("synth_0", "synth_1"):
            datasets.register_dataset_version(session, world.store, name=name, source=synthetic / name)
        for version in (1, 2):
            key = f"models/faces/{version}/model.onnx"
            world.store.put_bytes(key, b"onnx %d" % version)
            session.add(
                ModelVersion(
                    name="faces",
                    version=version,
                    card_sha256="0" * 64,
                    signature="signed",
                    artifacts={"model.onnx": {"key": key, "sha256": "0" * 64, "size": 6}},
                    eval_summary={},
                )
            )
        session.commit()
    return token


def _world(root: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[World, str]:
    root.mkdir(parents=True)
    world = World(f"sqlite:///{root / 'db.sqlite'}", None, LocalStore(root / "store"), root / "data")  # type: ignore[arg-type]
    migrate.upgrade(world.url)
    world.engine = make_engine(world.url)
    world.env(monkeypatch)
    return world, _seed(world, synthetic)


IGNORED: set[str] = set()  # fields one comparison leaves out (what differs by the transport's nature)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in IGNORED and k != "at"}  # "at": a time
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        # An attempt's crops lie in a folder of their own per upload (a random name, by nature).
        return WRITE_FOLDER.sub(r"\1", value.replace(API_ACTOR, "cli"))
    return value


WRITE_FOLDER = re.compile(r"^(attempts/\d+/\d+/)[0-9a-f]{16}/")


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, without what differs by nature (times, hashes, secrets, key prefixes)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            kept = [
                column
                for column in table.columns
                if not isinstance(getattr(column.type, "impl_instance", column.type), DateTime)
                and "hash" not in column.name
                and column.name != "prefix"
            ]
            rows = [
                {column: _plain(value) for column, value in row.items() if column not in IGNORED}
                for row in connection.execute(select(*kept).order_by(*table.primary_key.columns)).mappings()
            ]
            tables[table.name] = rows
    return tables


def diff(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where two snapshots differ: table, row and column with both values (the first 10)."""
    found = []
    for table in a:
        if len(a[table]) != len(b[table]):
            found.append(f"{table}: {len(a[table])} rows != {len(b[table])}")
            continue
        for index, (left, right) in enumerate(zip(a[table], b[table], strict=True)):
            found += [
                f"{table}[{index}].{k}: {left[k]!r} != {right[k]!r}" for k in left if left[k] != right[k]
            ]
    return found[:10]


def audit_events(engine: Engine, after: int) -> list[tuple[str, str, str, Any]]:
    with Session(engine) as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id))
        return [(e.action, e.target_type, e.target_id, _plain(e.details)) for e in events]


def last_event_id(engine: Engine) -> int:
    with Session(engine) as session:
        return max(session.scalars(select(AuditEvent.id)).all(), default=0)


@dataclass
class Pair:
    remote: World
    local: World
    server: str
    monkeypatch: pytest.MonkeyPatch
    covered: set[tuple[str, str]]

    def _compare(
        self, route: tuple[str, str], run_remote: Callable[[], None], run_local: Callable[[], None]
    ) -> None:
        marks = last_event_id(self.remote.engine), last_event_id(self.local.engine)
        run_remote()
        run_local()
        remote_events, local_events = (
            audit_events(self.remote.engine, marks[0]),
            audit_events(self.local.engine, marks[1]),
        )
        assert remote_events, f"{route}: the API wrote no audit event ({self.outputs})"
        assert remote_events == local_events, route
        differences = diff(snapshot(self.remote.engine), snapshot(self.local.engine))
        assert not differences, (route, differences)
        self.covered.add(route)

    def command(self, route: tuple[str, str], *args: str, ignore: tuple[str, ...] = ()) -> None:
        """One CLI command, remote (the route) against world A and local (the use case) against world B;
        ``ignore`` names fields that differ by the transport's nature (an upload's source label)."""

        def invoke(extra: list[str]) -> None:
            result = runner.invoke(cli_app, [*args, *extra])
            assert result.exit_code in (0, 1), result.output
            outputs.append((result.exit_code, result.output))

        outputs: list[tuple[int, str]] = []
        self.outputs = outputs
        IGNORED.update(ignore)
        try:
            self._compare(route, lambda: invoke(["--server", self.server]), lambda: invoke([]))
        finally:
            IGNORED.difference_update(ignore)
        assert outputs[0][0] == outputs[1][0], outputs

    def api_only(
        self,
        route: tuple[str, str],
        request: Callable[[httpx.Client], httpx.Response],
        use_case: Callable[[Session], object],
    ) -> None:
        """A route without a CLI command, against the use case its route calls."""

        def remote() -> None:
            with httpx.Client(
                base_url=self.server, headers={"Authorization": f"Bearer {self.token}"}
            ) as client:
                response = request(client)
                assert response.status_code < 300, response.text

        def local() -> None:
            with Session(self.local.engine, expire_on_commit=False) as session:
                use_case(session)
                session.commit()

        self._compare(route, remote, local)

    token: str = ""
    outputs: list[tuple[int, str]] | None = None


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FACEFLEET_SERVER_URL", raising=False)
    monkeypatch.setattr(runs, "start_run", _fake_start)
    synthetic = (
        generate_synthetic_datasets(
            tmp_path / "synthetic",
            num_datasets=2,
            identities_per_dataset=8,
            images_per_identity=4,
            verification_identities=6,
            verification_pairs=20,
            image_size=32,
            seed=3,
        )
        .dataset_dirs[0]
        .parent
    )
    remote, token = _world(tmp_path / "remote", synthetic, monkeypatch)
    local, _ = _world(tmp_path / "local", synthetic, monkeypatch)
    remote.env(monkeypatch)
    settings = get_settings()
    settings.dataset_roots = [str(tmp_path)]
    api = create_app(settings, engine=remote.engine, store=remote.store)
    local.env(monkeypatch)  # the CLI's local mode and anything that reads the settings: world B
    monkeypatch.setenv("FACEFLEET_API_KEY", token)
    get_settings.cache_clear()
    with serve_in_background(api) as server:
        yield Pair(remote, local, server, monkeypatch, set(), token)
    remote.engine.dispose()
    local.engine.dispose()


def _write_routes() -> set[tuple[str, str]]:
    """Every /v1 write route, read from the OpenAPI document (routers may be included lazily, so
    ``app.routes`` does not list them all)."""
    paths = create_app(get_settings()).openapi()["paths"]
    routes = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for method in operations
        if method.upper() in WRITE_METHODS
    }
    assert routes, "the OpenAPI document lists no write routes: the route listing is broken"
    return routes


def test_every_write_route_and_its_command_leave_the_same_audit_and_rows(pair: Pair, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_config(reversal={"enabled": False})))
    synthetic = tmp_path / "synthetic"

    pair.command(("POST", "/v1/keys"), "keys", "create", "--role", "viewer", "--name", "dash")
    pair.command(("DELETE", "/v1/keys/{key_id}"), "keys", "revoke", "2")
    pair.command(("POST", "/v1/devices"), "devices", "register", "door-1", "--group", "lobby")
    pair.command(("POST", "/v1/devices"), "devices", "register", "door-2", "--group", "lobby")
    pair.command(("POST", "/v1/devices/{device_id}/disable"), "devices", "disable", "2")
    pair.api_only(
        ("POST", "/v1/devices/{device_id}/enrollment-token"),
        lambda c: c.post("/v1/devices/1/enrollment-token"),
        lambda s: devices.reissue_enrollment_token_audited(s, 1, actor="cli"),
    )
    pair.command(
        ("POST", "/v1/runs"),
        "runs",
        "create",
        "--datasets",
        "synth_0,synth_1",
        "--config",
        str(config),
        "--name",
        "both",
    )
    pair.command(
        ("POST", "/v1/runs"),
        "runs",
        "create",
        "--datasets",
        "synth_0",
        "--config",
        str(config),
        "--name",
        "doomed",
    )
    pair.command(
        ("POST", "/v1/runs"), "runs", "create", "--datasets", "synth_1", "--config", str(config), "--no-start"
    )
    pair.command(("POST", "/v1/runs/{run_id}:cancel"), "runs", "cancel", "1")
    pair.command(("POST", "/v1/runs/{run_id}:cancel"), "runs", "cancel", "3")
    pair.command(("POST", "/v1/models/{name}/versions/{version}:promote"), "models", "promote", "faces", "1")
    pair.command(("POST", "/v1/models/{name}/versions/{version}:promote"), "models", "promote", "faces", "2")
    pair.command(
        ("POST", "/v1/models/{name}/versions/{version}:promote"),
        "models",
        "promote",
        "faces",
        "1",
        "--alias",
        "staging",
    )
    pair.api_only(
        ("PUT", "/v1/models/{name}/aliases/{alias}"),
        lambda c: c.put("/v1/models/faces/aliases/production", json={"version": 1}),
        lambda s: models.move_alias_audited(s, "faces", "production", 1, actor="cli"),
    )
    pair.command(
        ("POST", "/v1/deployments"),
        "deployments",
        "create",
        "--model",
        "faces",
        "--version",
        "1",
        "--group",
        "lobby",
    )
    pair.command(
        ("POST", "/v1/policies"),
        "policies",
        "create",
        "--name",
        "nightly",
        "--glob",
        "synth_*",
        "--config",
        str(config),
    )
    pair.command(("PATCH", "/v1/policies/{policy_id}"), "policies", "update", "1", "--debounce", "60")
    pair.command(("POST", "/v1/policies/{policy_id}:fire"), "policies", "fire", "1")
    pair.command(("DELETE", "/v1/policies/{policy_id}"), "policies", "delete", "1")
    pair.api_only(
        ("POST", "/v1/datasets"),
        lambda c: c.post("/v1/datasets", json={"name": "more", "source": str(synthetic / "synth_0")}),
        lambda s: datasets.register_dataset_version_audited(
            s,
            pair.local.store,
            actor="cli",
            source_label=str(synthetic / "synth_0"),
            name="more",
            source=str(synthetic / "synth_0"),
        ),
    )
    pair.api_only(
        ("DELETE", "/v1/datasets/{name}"),
        lambda c: c.delete("/v1/datasets/more"),
        lambda s: datasets.delete_dataset_audited(s, pair.local.store, "more", actor="cli"),
    )

    # Inspection: collection on for the lobby, the same attempts from door-1 in both worlds (given faces v1
    # by the deployment above), verdicts (one replaced), an inspection set, then erasure.
    pair.command(
        ("PUT", "/v1/collection/{group}"),
        "inspections",
        "collect",
        "lobby",
        "--attempts",
        "all",
        "--retention-days",
        "7",
    )
    for world in (pair.remote, pair.local):
        _record_attempts(world, 1, (1, 2, 3, 4))
    assert snapshot(pair.remote.engine)["attempts"] == snapshot(pair.local.engine)["attempts"]
    for attempt_id, verdict in (
        (1, "genuine"),
        (2, "impostor"),
        (3, "unusable"),
        (4, "genuine"),
        (4, "impostor"),
    ):
        pair.command(
            ("POST", "/v1/inspections/{attempt_id}"), "inspections", "label", str(attempt_id), verdict
        )
    pair.command(("POST", "/v1/inspection-sets"), "inspections", "export", "lobby-inspected")
    pair.command(
        ("POST", "/v1/inspection-sets"), "inspections", "export", "lobby-inspected", "--attempt", "1"
    )
    with Session(pair.local.engine) as session:
        exported = session.scalars(
            select(DatasetVersion).join(Dataset).where(Dataset.name == "lobby-inspected")
        ).all()
        assert [(v.version, v.pair_count, v.report["attempt_ids"]) for v in exported] == [
            (1, 3, [1, 2, 4]),  # attempt 3 is unusable
            (2, 1, [1]),
        ]
    pair.command(("DELETE", "/v1/inspections"), "inspections", "erase", "--device", "1")
    assert snapshot(pair.local.engine)["attempts"] == []

    # Last: from here on the two worlds' dataset rows differ by their source label.
    # Remote mode uploads a local folder (as a zip): the source label and format say so, the rest is equal.
    pair.command(
        ("POST", "/v1/datasets/upload"),
        "datasets",
        "register",
        str(synthetic / "verification"),
        "--name",
        "verif",
        "--kind",
        "verification",
        ignore=("source", "source_uri", "format"),
    )
    with Session(pair.local.engine) as session:
        statuses = {run.name: (run.status, run.cancel_requested) for run in session.scalars(select(Run))}
        doomed = session.scalars(select(Run).where(Run.name == "doomed")).one()
        actions = set(session.scalars(select(AuditEvent.action)))
    # Run 1 has a job (whose state the launcher cannot tell): the cancel is requested; run 3 had none.
    assert statuses == {"both": ("queued", True), "doomed": ("failed", False), "synth_1": ("cancelled", True)}
    assert doomed.error == "the launcher could not start the run: no cluster answers"
    assert {"runs.create", "runs.cancel", "models.promote", "models.alias", "keys.revoke"} <= actions
    assert {
        "inspections.collection_set",
        "inspections.label",
        "inspections.export",
        "inspections.erase",
    } <= actions
    missing = _write_routes() - pair.covered - TERMINAL_ROUTES
    assert not missing, f"write routes without a parity check: {sorted(missing)}"
