"""Tar shards and manifests: round trip on both stores, deterministic bytes, splitting by count and size."""

from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from facefleet.platform.datasets import layout
from facefleet.platform.datasets.shards import (
    ImageRecord,
    iter_shard,
    manifest_rows,
    pack_shards,
    read_image_bytes,
    read_manifest,
    read_pairs,
    write_manifest,
    write_pairs,
)
from facefleet.platform.store import ObjectStore


def _jpeg(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    image = Image.new("RGB", size, (seed * 37 % 256, seed * 11 % 256, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _records(count: int, identities: int = 3) -> list[ImageRecord]:
    return [
        ImageRecord.from_bytes(
            identity=f"person_{i % identities}",
            label=i % identities,
            member=f"person_{i % identities}/{i}.jpg",
            data=_jpeg(i),
        )
        for i in range(count)
    ]


def test_round_trip_on_both_stores(store: ObjectStore) -> None:
    records = _records(7)
    seen: list[int] = []
    rows = pack_shards(store, "faces", 1, records, max_images=3, progress=seen.append)
    assert sum(seen) == 7
    assert [row.shard for row in rows] == [layout.shard_key("faces", 1, i // 3) for i in range(7)]
    key = write_manifest(store, "faces", 1, rows)
    assert key == layout.manifest_key("faces", 1)
    table = read_manifest(store, key)
    assert table.num_rows == 7
    assert set(table.column_names) >= {"shard", "member", "identity", "label", "sha256", "width", "height"}
    back = manifest_rows(table)
    assert back == rows
    for record, row in zip(records, back, strict=True):
        assert (row.identity, row.label, row.width, row.height) == (record.identity, record.label, 24, 20)
        assert read_image_bytes(store, row.shard, row.member) == record.data
        assert read_image_bytes(store, row.shard, row.member, offset=row.offset, size=row.size) == record.data
    members = [name for shard in sorted({r.shard for r in rows}) for name, _ in iter_shard(store, shard)]
    assert members == [r.member for r in records]
    pairs_key = write_pairs(store, "faces", 1, [(0, 1, False), (0, 3, True)])
    assert read_pairs(store, pairs_key) == [(0, 1, False), (0, 3, True)]


def test_shards_are_deterministic_and_plain_tars(local_store: ObjectStore) -> None:
    records = _records(5)
    pack_shards(local_store, "a", 1, records)
    pack_shards(local_store, "a", 2, records)
    first = local_store.get_bytes(layout.shard_key("a", 1, 0))
    assert first == local_store.get_bytes(layout.shard_key("a", 2, 0))
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        infos = tar.getmembers()
    assert all(info.mtime == 0 and info.uid == 0 and info.mode == 0o644 for info in infos)


def test_split_by_size_keeps_shards_under_the_limit(local_store: ObjectStore) -> None:
    records = _records(10)
    limit = 4 * (len(records[0].data) + 2048)
    rows = pack_shards(local_store, "b", 1, records, max_bytes=limit)
    shards = sorted({row.shard for row in rows})
    assert len(shards) > 1
    assert all(local_store.size(shard) <= limit for shard in shards[:-1])
    # one image larger than the limit still gets its own shard instead of failing
    rows = pack_shards(local_store, "c", 1, records[:2], max_bytes=10)
    assert len({row.shard for row in rows}) == 2


def test_unicode_member_names_keep_offsets_right(local_store: ObjectStore) -> None:
    data = _jpeg(3)
    record = ImageRecord.from_bytes(identity="Zoë", label=0, member="Zoë/" + "x" * 120 + ".jpg", data=data)
    (row,) = pack_shards(local_store, "u", 1, [record])
    assert read_image_bytes(local_store, row.shard, row.member, offset=row.offset, size=row.size) == data


@pytest.mark.parametrize("member", ["../evil.jpg", "/abs.jpg", "a/../../b.jpg", ""])
def test_unsafe_member_names_are_rejected(local_store: ObjectStore, member: str) -> None:
    record = ImageRecord("x", 0, member, _jpeg(1), "0" * 64, 24, 20)
    with pytest.raises(ValueError, match="member name"):
        pack_shards(local_store, "d", 1, [record])


def test_duplicate_member_in_one_shard_is_rejected(local_store: ObjectStore) -> None:
    record = _records(1)[0]
    with pytest.raises(ValueError, match="duplicate"):
        pack_shards(local_store, "e", 1, [record, record])
