"""Helpers shared by the test suite and bench/ (neither imports the other): a throwaway PostgreSQL server,
a free loopback port, the artifacts the export worker writes for a model, and a model-version row as the
registry leaves it. Not product code: nothing under facefleet/ imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from sqlalchemy.orm import Session

from facefleet.nn.backbones import Backbone
from facefleet.nn.probe import make_probe_input
from facefleet.platform.db.models import ModelVersion
from facefleet.platform.models.card import ArchitectureSpec, InputSpec, ModelCard, ProbeSpec
from facefleet.platform.models.service import artifact_info
from facefleet.platform.store import ObjectStore

# the tiny backbone's default width: the export's card records only embedding_dim and input_size
TINY_WIDTH = 16
TINY_NETS = ("tiny", "tiny_gdc")  # the registered nets that take a width

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_binary(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    socket_dir: Path
    pg_ctl: str = "pg_ctl"
    log_file: Path | None = None
    max_connections: int = 200

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        """Start (again) on the same port and data directory; returns once it accepts connections."""
        options = f"-p {self.port} -k {self.socket_dir} -h 127.0.0.1 -c fsync=off"
        options += f" -c max_connections={self.max_connections}"
        log = ["-l", str(self.log_file)] if self.log_file else []
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.datadir), "-o", options, *log, "-w", "start"]),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: fast ends every session (rolling back open transactions), then exits."""
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "stop"]),
            check=True,
            capture_output=True,
        )


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user (env-notes recipe)."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *cmd]


@contextmanager
def running_postgres(max_connections: int = 200) -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL on a free loopback port (fsync off), removed on exit.

    Raises ``FileNotFoundError`` when the binaries are missing (the ``postgres_server`` fixture turns that
    into a skip, or a failure in CI). Used by the test session, the fault tests and bench/.
    """
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="facefleet-pg-"))
    datadir, socket_dir = root / "data", root / "sock"
    datadir.mkdir()
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        for path in (datadir, socket_dir):
            shutil.chown(path, "postgres", "postgres")
        root.chmod(0o755)
    datadir.chmod(0o700)
    subprocess.run(
        _as_postgres([initdb, "-D", str(datadir), "--auth=trust", "-U", "postgres", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(
        port=free_port(),
        datadir=datadir,
        socket_dir=socket_dir,
        pg_ctl=pg_ctl,
        log_file=root / "log.txt",
        max_connections=max_connections,
    )
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(datadir), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def write_artifacts(
    folder: Path, net: Backbone, *, threshold: float, corrupt_probe: bool = False, backbone: str = "tiny"
) -> ModelCard:
    """What the export worker writes: weights, a self-contained ONNX graph, and the card describing them.

    ``net`` was built as ``get_backbone(backbone, width=TINY_WIDTH, ...)``, ``backbone`` one of TINY_NETS."""
    folder.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    dummy = torch.zeros(1, 3, net.input_size, net.input_size)
    torch.onnx.export(
        net,
        (dummy,),
        str(folder / "model.onnx"),
        dynamo=False,
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}},
    )
    with torch.no_grad():
        probe = net(make_probe_input(1234, 2, net.input_size))
    if corrupt_probe:  # a model that does not do what its card says: the terminal's self-test must catch it
        probe = probe + 1.0
    return ModelCard(
        name="terminal",
        version=0,
        architecture=ArchitectureSpec(backbone=backbone, kwargs={"width": TINY_WIDTH}),
        input=InputSpec(size=net.input_size),
        embedding_dim=net.embedding_dim,
        threshold=threshold,
        artifacts={name: artifact_info(folder / name) for name in ("model.onnx", "model.safetensors")},
        probe=ProbeSpec(seed=1234, count=2, embeddings=probe.tolist(), tolerance=1e-3),
    )


def unsigned_model_version(
    session: Session,
    store: ObjectStore,
    name: str,
    version: int,
    *,
    card: bytes,
    onnx: bytes,
    signature: str,
    eval_summary: dict[str, Any],
) -> ModelVersion:
    """A model version row as the registry leaves it (card and ONNX bytes in the store, artifacts listed
    with their digests, a signature string), without a real model; flushed, not committed."""
    prefix = f"models/{name}/{version}"
    store.put_bytes(f"{prefix}/model_card.json", card)
    store.put_bytes(f"{prefix}/model.onnx", onnx)
    row = ModelVersion(
        name=name,
        version=version,
        artifacts={
            "model_card.json": {
                "key": f"{prefix}/model_card.json",
                "sha256": hashlib.sha256(card).hexdigest(),
                "size": len(card),
            },
            "model.onnx": {
                "key": f"{prefix}/model.onnx",
                "sha256": hashlib.sha256(onnx).hexdigest(),
                "size": len(onnx),
            },
        },
        card_sha256=hashlib.sha256(card).hexdigest(),
        signature=signature,
        eval_summary=eval_summary,
    )
    session.add(row)
    session.flush()
    return row


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (uvicorn workers, PostgreSQL's
    backends), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current and p not in tree]
        tree.update(children)
        frontier += children
    ticks = 0
    for p in tree:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
