"""Registering dataset versions on both databases and both stores: versions, objects, events, cleanup."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from facefleet.platform.datasets import service, shards
from facefleet.platform.db.models import AuditEvent, Dataset, DatasetVersion, OutboxEvent, Run, RunDataset
from facefleet.platform.errors import ConflictError, InvalidInputError, NotFoundError
from facefleet.platform.store import ObjectStore
from tests.platform.datasets.conftest import image_bytes, make_imagefolder


def _count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_register_reregister_and_new_version(session: Session, store: ObjectStore, tmp_path: Path) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=3, images=4)
    first = service.register_dataset_version(session, store, name="faces", source=folder, tags=["demo"])
    session.commit()
    assert (first.version, first.status, first.identity_count, first.image_count) == (1, "ready", 3, 12)
    table = shards.read_manifest(store, first.manifest_key or "")
    assert table.num_rows == 12
    assert sorted(set(table["label"].to_pylist())) == [0, 1, 2]
    assert set(table["identity"].to_pylist()) == {"id0", "id1", "id2"}
    assert first.report["images_per_identity"] == {"4": 3}
    objects = store.list("datasets/faces/")
    assert "datasets/faces/1/validation_report.json" in objects

    again = service.register_dataset_version(session, store, name="faces", source=folder)
    session.commit()
    assert again.id == first.id
    assert store.list("datasets/faces/") == objects
    assert _count(session, DatasetVersion) == 1

    (folder / "id1" / "extra.jpg").write_bytes(image_bytes(4242))
    second = service.register_dataset_version(session, store, name="faces", source=folder)
    session.commit()
    assert (second.version, second.image_count) == (2, 13)
    events = list(session.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))
    assert [event.payload["version"] for event in events] == [1, 2]
    assert events[0].kind == "dataset_version.ready"
    assert events[0].payload == {
        "dataset": "faces",
        "version": 1,
        "dataset_version_id": first.id,
        "kind": "train",
        "tags": ["demo"],
    }
    assert service.get_version(session, "faces").id == second.id
    assert service.get_version(session, "faces", 1).id == first.id


def test_failure_while_writing_leaves_no_rows_or_objects(
    session: Session, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=2, images=3)

    def broken_manifest(*args: object, **kwargs: object) -> str:
        raise OSError("store went away while writing the manifest")

    monkeypatch.setattr(shards, "write_manifest", broken_manifest)
    with pytest.raises(OSError, match="store went away"):
        service.register_dataset_version(session, store, name="faces", source=folder)
    assert store.list("datasets/") == []  # the shards written before the failure are gone
    assert _count(session, DatasetVersion) == 0
    session.rollback()
    assert _count(session, DatasetVersion) == 0 and _count(session, OutboxEvent) == 0


def test_invalid_content_leaves_no_dataset_and_is_audited(
    session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    """Issue 11 item 5: a refused registration of a new name leaves no dataset row and no version; the
    error carries the validation report and the attempt is an audit event."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(InvalidInputError, match="no usable images") as caught:
        service.register_dataset_version_audited(
            session, store, actor="tester", source_label=str(empty), name="broken", source=empty
        )
    assert caught.value.status_code == 422
    assert caught.value.report is not None and caught.value.report["ignored_count"] == 1
    session.rollback()  # what the API / CLI do on an error
    assert _count(session, Dataset) == 0 and _count(session, DatasetVersion) == 0
    assert store.list("datasets/") == []
    events = list(session.scalars(select(AuditEvent)))
    assert [(e.actor, e.action) for e in events] == [("tester", "datasets.register_failed")]
    assert events[0].details["dataset"] == "broken" and "no usable images" in events[0].details["error"]
    with pytest.raises(NotFoundError, match="no dataset named"):
        service.get_version(session, "broken")


def test_failed_reregistration_keeps_the_good_versions(
    session: Session, store: ObjectStore, tmp_path: Path
) -> None:
    good = service.register_dataset_version(
        session, store, name="faces", source=make_imagefolder(tmp_path / "faces", identities=2, images=3)
    )
    session.commit()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="holds no files"):
        service.register_dataset_version_audited(
            session, store, actor="tester", source_label="x", name="faces", source=empty
        )
    session.rollback()
    versions = service.list_versions(session, "faces")
    assert [(v.id, v.version, v.status) for v in versions] == [(good.id, 1, "ready")]
    assert service.get_version(session, "faces").id == good.id


def test_list_get_and_delete(sqlite_session: Session, local_store: ObjectStore, tmp_path: Path) -> None:
    session, store = sqlite_session, local_store
    service.register_dataset_version(session, store, name="b-set", source=make_imagefolder(tmp_path / "b"))
    used = service.register_dataset_version(
        session, store, name="a-set", source=make_imagefolder(tmp_path / "a")
    )
    session.commit()
    items, total = service.list_datasets(session, limit=1, offset=0)
    assert total == 2 and [item.name for item in items] == ["a-set"]
    assert service.list_datasets(session, kind="verification")[1] == 0
    assert service.latest_ready_versions(session, [items[0].id]) == {items[0].id: 1}

    run = Run(name="r")
    session.add(run)
    session.flush()
    session.add(RunDataset(run_id=run.id, position=0, dataset_version_id=used.id))
    session.commit()
    with pytest.raises(ConflictError, match="used by run"):
        service.delete_dataset(session, store, "a-set")
    service.delete_dataset(session, store, "b-set")
    session.commit()
    assert store.list("datasets/b-set/") == [] and store.list("datasets/a-set/") != []
    with pytest.raises(NotFoundError):
        service.get_dataset(session, "b-set")
    assert _count(session, Dataset) == 1


def test_request_errors_record_nothing(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        service.register_dataset_version(sqlite_session, local_store, name="x", source=tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="name"):
        service.register_dataset_version(sqlite_session, local_store, name="../x", source=tmp_path)
    service.register_dataset_version(
        sqlite_session, local_store, name="t", source=make_imagefolder(tmp_path / "f")
    )
    sqlite_session.commit()
    with pytest.raises(InvalidInputError, match="is a train dataset"):
        service.register_dataset_version(
            sqlite_session, local_store, name="t", source=tmp_path / "f", kind="verification"
        )
    assert _count(sqlite_session, Dataset) == 1 and _count(sqlite_session, DatasetVersion) == 1


def test_the_local_cli_reads_any_folder_but_never_facefleet_files(
    sqlite_session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    """Without --server the user's own readable paths are fine (no roots); facefleet's files never are."""
    from facefleet.platform.errors import PermissionDeniedError

    session, store = sqlite_session, local_store
    elsewhere = make_imagefolder(tmp_path / "anywhere" / "faces", identities=2, images=2)
    assert service.register_dataset_version(session, store, name="mine", source=elsewhere).status == "ready"
    database = Path(session.get_bind().url.database or "")
    for source in (database, tmp_path, tmp_path / "store"):
        with pytest.raises(PermissionDeniedError, match="cannot be registered") as caught:
            service.register_dataset_version(session, store, name="nope", source=source)
        assert caught.value.status_code == 403 and caught.value.field == "source"


def test_a_registration_that_is_not_committed_leaves_no_objects(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    folder = make_imagefolder(tmp_path / "faces", identities=2, images=2)
    service.register_dataset_version(session, local_store, name="faces", source=folder)
    assert local_store.list("datasets/faces/1/") != []
    session.rollback()  # what the caller does when its commit fails
    assert local_store.list("datasets/") == []
    assert (_count(session, Dataset), _count(session, DatasetVersion)) == (0, 0)
    # The undo ran once: the next registration of the same content commits and keeps its objects.
    kept = service.register_dataset_version(session, local_store, name="faces", source=folder)
    session.commit()
    assert kept.version == 1 and local_store.list("datasets/faces/1/") != []


def test_undoing_a_failed_write_spares_the_registration_that_holds_the_version(
    session: Session, local_store: ObjectStore, tmp_path: Path
) -> None:
    """The undo runs after the failed transaction released version n: another registration may hold n by
    then (committed, or still writing its objects); its objects are not touched."""
    engine = session.get_bind()
    folder = make_imagefolder(tmp_path / "faces", identities=2, images=2)
    service.register_dataset_version(session, local_store, name="faces", source=folder)  # in flight
    objects = local_store.list("datasets/faces/1/")
    outcome: list[bool] = []
    undo = threading.Thread(
        target=lambda: outcome.append(service.discard_unclaimed_version(engine, local_store, "faces", 1))
    )
    undo.start()
    undo.join(0.5)
    assert undo.is_alive()  # waits for the registration in flight to end
    session.commit()
    undo.join(30)
    assert outcome == [False] and local_store.list("datasets/faces/1/") == objects
    assert service.discard_unclaimed_version(engine, local_store, "faces", 1) is False  # committed: kept
    assert local_store.list("datasets/faces/1/") == objects
    assert service.discard_unclaimed_version(engine, local_store, "faces", 2) is True  # nobody's: deleted
