"""Issue 11, items 3-6: which server paths the API reads, archive limits, and refused registrations.

Every refusal is a 4xx problem without a stack trace, and leaves no dataset, no version and no object.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from facefleet.api.app import create_app
from facefleet.platform.db.models import AuditEvent
from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store import ObjectStore
from tests.api.conftest import Api, image_bytes, make_imagefolder, seed_key
from tests.api.test_api_bad_input import assert_problem, counts, stored_objects

MIB = 1 << 20


def _post(api: Api, source: str, name: str = "faces") -> dict:
    response = api.client.post("/v1/datasets", headers=api.admin, json={"name": name, "source": source})
    assert 400 <= response.status_code < 500, (source[:200], response.status_code, response.text[:500])
    assert "Traceback" not in response.text
    return response.json()


def _failed_attempts(api: Api) -> list[AuditEvent]:
    with api.session() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == "datasets.register_failed"))
        )


# ------------------------------------------------------------------ item 3: allow-listed roots


def test_paths_outside_the_roots_get_one_message_whether_or_not_they_exist(sqlite_api: Api) -> None:
    api = sqlite_api
    before = counts(api)
    outside = api.tmp.parent / f"{api.tmp.name}-outside"
    outside.mkdir()
    make_imagefolder(outside / "faces")
    (api.tmp / "escape").symlink_to(outside / "faces")
    bodies = [
        _post(api, source)
        for source in (
            "/etc/shadow",  # exists, unreadable
            "/etc/passwd",  # exists, readable
            "/no/such/path/anywhere",  # does not exist
            str(outside / "faces"),  # a good dataset, outside the roots
            str(api.tmp / ".." / outside.name / "faces"),  # '..' out of a root
            str(api.tmp / "escape"),  # a symlink inside a root that points out of it
            "s3://some-bucket/faces",  # no s3 prefix is allowed here
        )
    ]
    assert {body["status"] for body in bodies} == {403}
    assert len({body["detail"] for body in bodies}) == 1, bodies  # nothing tells what exists
    assert "FACEFLEET_DATASET_ROOTS" in bodies[0]["detail"] and bodies[0]["field"] == "source"
    after = counts(api)
    assert {k: v for k, v in after.items() if k != "AuditEvent"} == {
        k: v for k, v in before.items() if k != "AuditEvent"
    }
    assert len(_failed_attempts(api)) == 7  # each refused attempt is audited


def test_facefleet_files_are_refused_even_inside_a_root(sqlite_api: Api, settings: Settings) -> None:
    """The data dir, store, database (and its WAL) and signing key, under any name, are never read."""
    api = sqlite_api
    database = Path(api.engine.url.database or "")
    assert database.is_file() and database.parent == api.tmp  # inside the allowed root
    key = settings.effective_signing_key_path
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    links = api.tmp / "links"
    (links / "id0").mkdir(parents=True)
    os.link(database, links / "id0" / "0.jpg")  # the database under an image's name
    (api.tmp / "db-symlink").symlink_to(database)
    api.store.put_bytes("datasets/other/1/manifest.parquet", b"x")
    store_root = api.tmp / "store"
    before = counts(api)
    for source in (
        str(database),
        f"{database}-wal",
        str(api.tmp / "db-symlink"),
        str(links),
        str(links / "id0" / "0.jpg"),
        str(api.tmp),  # contains everything
        str(settings.data_dir),
        str(key),
        str(store_root),
        str(store_root / "datasets" / "other"),
    ):
        body = _post(api, source)
        assert body["status"] == 403 and "FACEFLEET_DATASET_ROOTS" in body["detail"], (source, body)
    after = counts(api)
    assert after["Dataset"] == before["Dataset"] and after["DatasetVersion"] == before["DatasetVersion"]


def _app_with(
    engine: Engine, store: ObjectStore, **overrides: object
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = get_settings().model_copy(update=overrides)
    with TestClient(create_app(settings, engine=engine, store=store)) as client:
        yield client, seed_key(engine, "admin", "root")


def _zip_of_folder(folder: Path) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return out.getvalue()


def test_by_default_the_server_reads_no_paths_but_uploads_work(
    sqlite_engine: Engine, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = make_imagefolder(tmp_path / "faces")
    for client, admin in _app_with(sqlite_engine, local_store):  # dataset_roots: the default (empty)
        refused = client.post("/v1/datasets", headers=admin, json={"name": "faces", "source": str(folder)})
        assert_problem(refused, 403, "source")
        uploaded = client.post(
            "/v1/datasets/upload",
            headers=admin,
            data={"name": "faces"},
            files={"file": ("faces.zip", _zip_of_folder(folder))},
        )
        assert uploaded.status_code == 201, uploaded.text


# ------------------------------------------------------------------ item 4: archive limits


def _zip_bomb(path: Path, entry_bytes: int) -> Path:
    """One highly compressible ``.jpg`` entry, written in chunks (the test itself stays small)."""
    chunk = bytes(MIB)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("id0/bomb.jpg", "w", force_zip64=True) as entry:
            for _ in range(entry_bytes // MIB):
                entry.write(chunk)
        zf.writestr("id0/ok.jpg", image_bytes(1))
    return path


def _tar_gz_bomb(path: Path, entry_bytes: int) -> Path:
    class Zeros:
        def __init__(self, size: int) -> None:
            self.left = size

        def read(self, size: int = -1) -> bytes:
            count = self.left if size < 0 else min(size, self.left)
            self.left -= count
            return bytes(count)

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("id0/bomb.jpg")
        info.size = entry_bytes
        tar.addfile(info, Zeros(entry_bytes))  # type: ignore[arg-type]
    return path


def _upload(client: TestClient, admin: dict[str, str], archive: Path) -> dict:
    with archive.open("rb") as handle:
        response = client.post(
            "/v1/datasets/upload",
            headers=admin,
            data={"name": "bomb"},
            files={"file": (archive.name, handle)},
        )
    assert "Traceback" not in response.text
    return {"status": response.status_code, **response.json()}


def test_zip_and_tar_bombs_are_refused_with_bounded_memory(sqlite_api: Api) -> None:
    """A 256 MiB entry of zeros (a few hundred KiB compressed) named .jpg: 413 naming the limit, and
    the server's Python allocations stay far under 100 MB (before the fix: the whole entry in memory)."""
    api = sqlite_api
    before = counts(api)
    for archive in (
        _zip_bomb(api.tmp / "bomb.zip", 256 * MIB),
        _tar_gz_bomb(api.tmp / "bomb.tar.gz", 256 * MIB),
    ):
        assert archive.stat().st_size < 2 * MIB
        tracemalloc.start()
        try:
            body = _upload(api.client, api.admin, archive)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert body["status"] == 413 and "FACEFLEET_ARCHIVE_MAX_RATIO" in body["detail"], body
        assert peak < 100 * MIB, f"{archive.name}: {peak / MIB:.0f} MiB traced"
    assert stored_objects(api) == []
    after = counts(api)
    assert after["Dataset"] == before["Dataset"] and after["DatasetVersion"] == before["DatasetVersion"]


@pytest.mark.parametrize(
    ("setting", "value", "entries", "entry_bytes"),
    [
        ("archive_max_entries", 5, 10, 1000),
        ("archive_max_entry_bytes", MIB, 2, 2 * MIB),
        ("archive_max_bytes", 3 * MIB, 4, MIB),
    ],
)
def test_each_archive_limit_is_a_413_naming_its_setting(
    sqlite_engine: Engine,
    local_store: ObjectStore,
    tmp_path: Path,
    setting: str,
    value: int,
    entries: int,
    entry_bytes: int,
) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored, random bytes: no ratio involved
        for index in range(entries):
            zf.writestr(f"id{index % 2}/{index}.jpg", os.urandom(entry_bytes))
    for client, admin in _app_with(sqlite_engine, local_store, **{setting: value}):
        body = _upload(client, admin, archive)
        assert body["status"] == 413 and f"FACEFLEET_{setting.upper()}" in body["detail"], body
        assert body["field"] == "source"


# ------------------------------------------------------------------ item 5: refused registrations


def test_a_refused_registration_leaves_no_dataset_and_is_audited(sqlite_api: Api) -> None:
    api = sqlite_api
    folder = api.tmp / "not-faces"
    (folder / "id0").mkdir(parents=True)
    (folder / "id0" / "a.jpg").write_bytes(b"not an image at all")
    (folder / "readme.txt").write_text("hello")
    response = api.client.post(
        "/v1/datasets", headers=api.admin, json={"name": "fresh", "source": str(folder)}
    )
    body = assert_problem(response, 422, "source")
    assert "no usable images" in body["detail"]
    report = body["report"]  # the validation report comes with the error
    assert report["corrupt_count"] == 1 and report["corrupt"][0]["path"] == "id0/a.jpg"
    assert report["ignored_count"] == 1
    assert api.client.get("/v1/datasets", headers=api.viewer).json()["total"] == 0
    assert api.client.get("/v1/datasets/fresh", headers=api.viewer).status_code == 404
    assert counts(api)["DatasetVersion"] == 0 and stored_objects(api) == []
    [event] = _failed_attempts(api)
    assert event.details["dataset"] == "fresh" and event.details["status"] == 422
    assert event.actor.endswith(":root")

    good = api.client.post(
        "/v1/datasets",
        headers=api.admin,
        json={"name": "fresh", "source": str(make_imagefolder(api.tmp / "good"))},
    )
    assert good.status_code == 201
    again = api.client.post("/v1/datasets", headers=api.admin, json={"name": "fresh", "source": str(folder)})
    assert_problem(again, 422, "source")
    versions = api.client.get("/v1/datasets/fresh/versions", headers=api.viewer).json()
    assert [(v["version"], v["status"]) for v in versions["items"]] == [(1, "ready")]
    assert api.client.get("/v1/datasets/fresh", headers=api.viewer).json()["latest_version"] == 1


# ------------------------------------------------------------------ item 6: long path components


def test_overlong_paths_are_422_and_the_log_holds_no_huge_path(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api = sqlite_api
    caplog.set_level(logging.DEBUG)
    component = str(api.tmp / ("a" * 300))
    body = _post(api, component)
    assert body["status"] == 422 and body["field"] == "source" and "255" in body["detail"]
    assert len(body["detail"]) < 500
    huge = str(api.tmp / "x" / ("b" * (10 << 20)))
    response = api.client.post("/v1/datasets", headers=api.admin, json={"name": "faces", "source": huge})
    assert_problem(response, 422, "source")
    assert len(response.text) < 5000
    assert all(len(record.getMessage()) < 20_000 for record in caplog.records)
    assert counts(api)["Dataset"] == 0
