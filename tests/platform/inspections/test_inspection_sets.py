"""Labelled attempts -> an inspection set that reads back like a verification set, on both stores."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from facefleet.platform.datasets import shards
from facefleet.platform.db.models import Dataset, DatasetVersion, Run, RunDataset
from facefleet.platform.errors import ConflictError, InvalidInputError
from facefleet.platform.inspections import service as inspections
from facefleet.platform.inspections.sets import create_inspection_set
from facefleet.platform.store import ObjectStore
from tests.platform.inspections.factories import attempt_body, collect, give, make_device, make_version

LIMITS = {"max_bytes": 64 * 1024, "rate_per_hour": 100}


def test_labelled_attempts_become_pairs_with_the_inspectors_labels(
    session: Session, store: ObjectStore
) -> None:
    door, gate = make_device(session, "door-1"), make_device(session, "gate-1")
    version = make_version(session)
    give(session, door, version)
    give(session, gate, version)
    collect(session, attempts="all")
    verdicts = {0: "genuine", 1: "impostor", 2: "unusable", 3: "genuine", 4: None}
    ids = {}
    for seed, verdict in verdicts.items():
        device = door if seed % 2 == 0 else gate
        attempt = inspections.record_attempt(
            session, store, device, attempt_body(version.id, seed * 10, score=0.3 + seed / 10), **LIMITS
        )
        ids[seed] = attempt.id
        if verdict is not None:
            inspections.label_attempt_audited(session, attempt_id=attempt.id, verdict=verdict, actor="t")
    session.commit()

    dv = create_inspection_set(session, store, name="lobby-inspected")
    session.commit()
    assert (dv.format, dv.status, dv.version) == ("inspection", "ready", 1)
    assert (dv.identity_count, dv.image_count, dv.pair_count) == (0, 6, 3)
    assert dv.report == {
        "kind": "inspection",
        "threshold": 0.5,
        "model_versions": [version.id],
        "attempts": 3,
        "genuine": 2,
        "impostor": 1,
        "devices": sorted({door.id, gate.id}),
        "attempt_ids": [ids[0], ids[1], ids[3]],
    }
    dataset = session.scalars(select(Dataset).where(Dataset.name == "lobby-inspected")).one()
    assert dataset.kind == "inspection"
    assert dv.manifest_key is not None
    manifest = shards.manifest_rows(shards.read_manifest(store, dv.manifest_key))
    pairs = shards.read_pairs(store, dv.manifest_key.replace("manifest.parquet", "pairs.parquet"))
    assert pairs == [(0, 1, True), (2, 3, False), (4, 5, True)]
    for (left, right, _same), seed in zip(pairs, (0, 1, 3), strict=True):
        attempt = inspections.get_live_attempt(session, ids[seed])
        reference = shards.read_image_bytes(
            store,
            manifest[left].shard,
            manifest[left].member,
            offset=manifest[left].offset,
            size=manifest[left].size,
        )
        probe = shards.read_image_bytes(
            store,
            manifest[right].shard,
            manifest[right].member,
            offset=manifest[right].offset,
            size=manifest[right].size,
        )
        assert reference == store.get_bytes(attempt.reference_key)  # left: the enrolled reference crop
        assert probe == store.get_bytes(attempt.probe_key)  # right: the attempt's crop
    # The same attempts and verdicts again: the same version; a new verdict: the next version.
    assert create_inspection_set(session, store, name="lobby-inspected").id == dv.id
    inspections.label_attempt_audited(session, attempt_id=ids[4], verdict="impostor", actor="t")
    again = create_inspection_set(session, store, name="lobby-inspected")
    assert (again.version, again.pair_count, again.report["impostor"]) == (2, 4, 2)
    only_gate = create_inspection_set(session, store, name="gate-only", device_ids=[gate.id])
    assert only_gate.report["devices"] == [gate.id] and only_gate.pair_count == 2  # seeds 1 and 3


def test_bad_exports_are_refused_and_write_nothing(session: Session, local_store: ObjectStore) -> None:
    store = local_store
    device = make_device(session)
    v1, v2 = make_version(session, "m", 1), make_version(session, "m", 2)
    give(session, device, v1)
    give(session, device, v2)
    collect(session, attempts="all")
    first = inspections.record_attempt(session, store, device, attempt_body(v1.id, 1), **LIMITS)
    second = inspections.record_attempt(
        session, store, device, attempt_body(v2.id, 2, threshold=0.6), **LIMITS
    )
    unusable = inspections.record_attempt(session, store, device, attempt_body(v2.id, 3), **LIMITS)
    pending = inspections.record_attempt(session, store, device, attempt_body(v2.id, 4), **LIMITS)
    for attempt, verdict in ((first, "genuine"), (second, "impostor"), (unusable, "unusable")):
        inspections.label_attempt_audited(session, attempt_id=attempt.id, verdict=verdict, actor="t")
    session.commit()
    with pytest.raises(InvalidInputError, match="different thresholds"):
        create_inspection_set(session, store, name="mixed")
    with pytest.raises(InvalidInputError, match=str(pending.id)):
        create_inspection_set(session, store, name="x", attempt_ids=[first.id, pending.id])
    with pytest.raises(InvalidInputError, match=str(unusable.id)):
        create_inspection_set(session, store, name="x", attempt_ids=[unusable.id])
    with pytest.raises(InvalidInputError, match="no labelled"):
        create_inspection_set(session, store, name="x", group="elsewhere")
    session.rollback()
    assert store.list("datasets/") == []
    session.add(Dataset(name="lfw", kind="verification"))
    session.commit()
    with pytest.raises(ConflictError, match="verification dataset"):
        create_inspection_set(session, store, name="lfw", model_version_ids=[v1.id])
    ok = create_inspection_set(session, store, name="v1-only", model_version_ids=[v1.id])
    assert ok.report["threshold"] == 0.5 and ok.report["model_versions"] == [v1.id]


def test_erasure_deletes_the_sets_holding_the_devices_crops_unless_a_run_used_them(
    session: Session, store: ObjectStore
) -> None:
    door, gate = make_device(session, "door-1"), make_device(session, "gate-1")
    version = make_version(session)
    give(session, door, version)
    give(session, gate, version)
    collect(session, attempts="all")
    ids = {}
    for seed, device in enumerate((door, gate, door, gate)):
        attempt = inspections.record_attempt(session, store, device, attempt_body(version.id, seed), **LIMITS)
        inspections.label_attempt_audited(session, attempt_id=attempt.id, verdict="genuine", actor="t")
        ids[seed] = attempt.id
    trained = create_inspection_set(session, store, name="week1", attempt_ids=[ids[0], ids[1]])
    unused = create_inspection_set(session, store, name="week2", attempt_ids=[ids[2], ids[3]])
    gate_only = create_inspection_set(session, store, name="gate-only", device_ids=[gate.id])
    run = Run(name="distill", status="succeeded")
    session.add(run)
    session.flush()
    session.add(RunDataset(run_id=run.id, position=0, role="inspection", dataset_version_id=trained.id))
    session.commit()

    result = inspections.erase_device_attempts_audited(session, store, device_id=door.id, actor="admin")
    session.commit()
    assert (result.deleted, result.inspection_sets_deleted, result.inspection_sets_kept) == (
        2,
        ["week2:1"],
        ["week1:1"],  # a run was trained on it: kept, and named so the admin can act
    )
    erased = session.get(DatasetVersion, unused.id)
    assert erased is not None and (erased.status, erased.pair_count) == ("erased", 0)
    assert store.list("datasets/week2/1/") == []
    assert session.get(DatasetVersion, trained.id) is not None and store.list("datasets/week1/1/") != []
    assert session.get(DatasetVersion, gate_only.id) is not None  # holds no crop of door-1
    # The erased set's other attempts are still there, and export again.
    again = create_inspection_set(session, store, name="week2", attempt_ids=[ids[3]])
    assert (again.version, again.pair_count) == (2, 1)  # week2:1 is never reused for other content
    assert (
        inspections.erase_device_attempts_audited(
            session, store, device_id=door.id, actor="admin"
        ).inspection_sets_deleted
        == []
    )  # an erased version is not erased twice


def test_an_erased_set_points_at_no_deleted_object(session: Session, local_store: ObjectStore) -> None:
    door = make_device(session, "door-1")
    version = make_version(session)
    give(session, door, version)
    collect(session, attempts="all")
    ids = []
    for seed in range(2):
        attempt = inspections.record_attempt(
            session, local_store, door, attempt_body(version.id, seed), **LIMITS
        )
        inspections.label_attempt_audited(session, attempt_id=attempt.id, verdict="genuine", actor="t")
        ids.append(attempt.id)
    trained = create_inspection_set(session, local_store, name="week1", attempt_ids=[ids[0]])
    unused = create_inspection_set(session, local_store, name="week2", attempt_ids=[ids[1]])
    run = Run(name="distill", status="succeeded")
    session.add(run)
    session.flush()
    session.add(RunDataset(run_id=run.id, position=0, role="inspection", dataset_version_id=trained.id))
    session.commit()

    inspections.erase_device_attempts_audited(session, local_store, device_id=door.id, actor="admin")
    session.commit()
    session.expire_all()
    erased, kept = session.get(DatasetVersion, unused.id), session.get(DatasetVersion, trained.id)
    assert erased is not None and kept is not None
    assert erased.status == "erased" and local_store.list("datasets/week2/1/") == []
    assert erased.manifest_key is None  # its objects are gone: nothing may read them
    # The set a run used keeps its crops (README "What erasure and retention do"), and its pointer.
    assert kept.status == "ready" and kept.manifest_key is not None and local_store.exists(kept.manifest_key)
