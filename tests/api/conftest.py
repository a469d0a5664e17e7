"""Fixtures for API tests: the real app on each database, seeded keys, tiny datasets, a recording starter."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from facefleet.api.app import create_app
from facefleet.platform.auth import create_api_key
from facefleet.platform.db.models import ModelVersion, Run
from facefleet.platform.settings import get_settings
from facefleet.platform.store import ObjectStore


def image_bytes(seed: int) -> bytes:
    image = Image.new("RGB", (24, 28), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % 24, (seed // 24) % 28), (255, 255, 255))
    out = BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def make_imagefolder(root: Path, identities: int = 3, images: int = 3, seed: int = 0) -> Path:
    for identity in range(identities):
        folder = root / f"id{identity}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images):
            (folder / f"{index}.jpg").write_bytes(image_bytes(seed * 1000 + identity * 10 + index))
    return root


def make_lfw_folder(root: Path, people: int = 3, per_person: int = 2) -> Path:
    names = [f"Person_{chr(65 + i)}" for i in range(people)]
    for p, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_person + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(image_bytes(500 + p * 10 + i))
    lines = [f"1 {people}"]
    lines += [f"{name}\t1\t2" for name in names]
    lines += [f"{names[i]}\t1\t{names[(i + 1) % people]}\t1" for i in range(people)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


@dataclass
class RecordingStarter:
    """Stands in for the launcher: records the run and gives it a job id, trains nothing."""

    started: list[int] = field(default_factory=list)

    def __call__(self, session: Session, run: Run) -> None:
        run.launcher_job_id = f"test-job-{run.id}"
        self.started.append(run.id)


@dataclass
class Api:
    client: TestClient
    engine: Engine
    store: ObjectStore
    admin: dict[str, str]
    viewer: dict[str, str]
    starter: RecordingStarter
    tmp: Path

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


def seed_key(engine: Engine, role: str, name: str) -> dict[str, str]:
    with Session(engine) as session:
        _, token = create_api_key(session, name=name, role=role)
        session.commit()
    return {"Authorization": f"Bearer {token}"}


def _client(engine: Engine, store: ObjectStore, tmp_path: Path) -> Iterator[Api]:
    # The server reads dataset folders only under FACEFLEET_DATASET_ROOTS: here the test's temp folder.
    # (Set on the process's settings object, which the autouse fixture makes fresh for every test.)
    settings = get_settings()
    settings.dataset_roots = [str(tmp_path)]
    app = create_app(settings, engine=engine, store=store)
    starter = RecordingStarter()
    app.state.run_starter = starter
    with TestClient(app) as client:
        yield Api(
            client,
            engine,
            store,
            seed_key(engine, "admin", "root"),
            seed_key(engine, "viewer", "reader"),
            starter,
            tmp_path,
        )


@pytest.fixture
def api(engine: Engine, local_store: ObjectStore, tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite and on PostgreSQL."""
    yield from _client(engine, local_store, tmp_path)


@pytest.fixture
def sqlite_api(sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path) -> Iterator[Api]:
    """The app on SQLite only (error-shape tests where the database adds nothing)."""
    yield from _client(sqlite_engine, local_store, tmp_path)


def register_folder(
    api: Api,
    name: str,
    *,
    seed: int = 0,
    kind: str = "train",
    tags: list[str] | None = None,
    identities: int = 3,
) -> dict:
    folder = (
        make_lfw_folder(api.tmp / f"src-{name}-{seed}")
        if kind == "verification"
        else make_imagefolder(api.tmp / f"src-{name}-{seed}", identities=identities, seed=seed)
    )
    response = api.client.post(
        "/v1/datasets",
        headers=api.admin,
        json={"name": name, "source": str(folder), "kind": kind, "tags": tags or []},
    )
    assert response.status_code == 201, response.text
    return response.json()


def add_model_version(
    api: Api,
    name: str,
    version: int,
    *,
    run_id: int | None = None,
    accuracy: float | None = None,
    verification_set: str = "lfw",
) -> ModelVersion:
    """A registered model version with real bytes in the store (what the training export would leave)."""
    data = f"weights of {name} v{version}".encode() * 1000
    key = f"models/{name}/{version}/model.onnx"
    api.store.put_bytes(key, data)
    summary = {verification_set: {"cosine": {"accuracy": accuracy}}} if accuracy is not None else {}
    with api.session() as session:
        model = ModelVersion(
            name=name,
            version=version,
            run_id=run_id,
            card_sha256="0" * 64,
            artifacts={
                "model.onnx": {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            },
            eval_summary=summary,
        )
        session.add(model)
        session.commit()
    return model
