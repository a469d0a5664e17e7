"""The training data pipeline: label space, global labels, rank splits, balanced batches, cache bound."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facefleet.platform.datasets.shards import (
    ImageRecord,
    pack_shards,
    read_manifest,
    write_manifest,
    write_pairs,
)
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.store import ObjectStore
from facefleet.workers.data import (
    LabelSpaceEntry,
    SampleIndex,
    ShardStreamDataset,
    build_label_space,
    decode_image,
    load_verification_set,
    make_train_loader,
    pairs_within_dataset,
    rank_samples,
)
from facefleet.workers.data_cache import ShardCache, ShardReader
from facefleet.workers.sampler import BalancedBatchSampler

CLASSES = [3, 5, 2]  # identities per dataset
IMAGES_PER_IDENTITY = 4


def _image_bytes(value: int, fmt: str) -> bytes:
    """An image whose red channel encodes ``value`` so tests can tell which image they got back."""
    image = Image.new("RGB", (20, 16), (value, 128, 255 - value))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pack(store: ObjectStore, name: str, classes: int, code_base: int) -> LabelSpaceEntry:
    records = []
    for label in range(classes):
        for n in range(IMAGES_PER_IDENTITY):
            fmt = ("JPEG", "PNG", "PPM")[n % 3]
            data = _image_bytes(code_base + 10 * label, fmt)
            records.append(
                ImageRecord.from_bytes(identity=f"p{label}", label=label, member=f"p{label}/{n}", data=data)
            )
    rows = pack_shards(store, name, 1, records, max_images=3)
    key = write_manifest(store, name, 1, rows)
    return LabelSpaceEntry(
        dataset_version_id=len(name) * 100 + code_base,
        dataset_name=name,
        version=1,
        manifest_key=key,
        num_classes=classes,
        image_count=len(records),
    )


def _three_datasets(store: ObjectStore) -> list[LabelSpaceEntry]:
    # dataset k, label l is painted with red = 60*k + 10*l so the decoded pixel names its source
    return build_label_space([_pack(store, f"ds{k}", c, 60 * k) for k, c in enumerate(CLASSES)])


def test_build_label_space_offsets() -> None:
    entries = [
        LabelSpaceEntry(
            dataset_version_id=i,
            dataset_name=f"d{i}",
            version=1,
            manifest_key="k",
            num_classes=c,
            image_count=10,
        )
        for i, c in enumerate([4, 7, 2])
    ]
    assert [e.class_offset for e in build_label_space(entries)] == [0, 4, 11]
    with pytest.raises(InvalidInputError, match="twice"):
        build_label_space([entries[0], entries[0]])


def test_global_labels_and_dataset_indices(store: ObjectStore, tmp_path: Path) -> None:
    entries = _three_datasets(store)
    assert [e.class_offset for e in entries] == [0, 3, 8]
    loader = make_train_loader(
        entries,
        store_url=store.url,
        s3_endpoint_url=getattr(store, "endpoint_url", None),
        batch_size=5,
        input_size=8,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=1,
        cache_dir=tmp_path / "cache",
        cache_bytes=1 << 20,
        epochs=1,
    )
    seen = 0
    for images, labels, datasets in loader:
        assert images.shape == (5, 3, 8, 8) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and datasets.dtype == torch.int64
        assert images.min() >= -1.0 and images.max() <= 1.0
        for image, label, dataset in zip(images, labels, datasets, strict=True):
            local = int(label) - entries[int(dataset)].class_offset
            assert 0 <= local < CLASSES[int(dataset)]
            red = float(image[0].mean()) * 127.5 + 127.5  # uniform colour survives JPEG and resize
            assert abs(red - (60 * int(dataset) + 10 * local)) < 4
        seen += len(labels)
    assert seen == (sum(CLASSES) * IMAGES_PER_IDENTITY // 5) * 5


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_cover_every_sample_once_per_epoch(local_store: ObjectStore, world_size: int) -> None:
    index = SampleIndex(local_store, _three_datasets(local_store))
    total = len(index)  # 40 samples in 14 shards
    for epoch in (0, 1):
        parts = [
            rank_samples(index, epoch=epoch, seed=5, rank=r, world_size=world_size) for r in range(world_size)
        ]
        assert len({len(p) for p in parts}) == 1
        merged = np.concatenate(parts)
        assert len(set(merged.tolist())) == len(merged) == total // world_size * world_size
        uneven = [
            rank_samples(index, epoch=epoch, seed=5, rank=r, world_size=world_size, even=False)
            for r in range(world_size)
        ]
        assert sorted(np.concatenate(uneven).tolist()) == list(range(total))
    first = rank_samples(index, epoch=0, seed=5, rank=0, world_size=1)
    assert not np.array_equal(first, rank_samples(index, epoch=1, seed=5, rank=0, world_size=1))


def test_dataloader_workers_split_a_rank_without_overlap(local_store: ObjectStore) -> None:
    index = SampleIndex(local_store, _three_datasets(local_store))
    reader = ShardReader(local_store.url)
    stream = ShardStreamDataset(index, reader, input_size=8, rank=1, world_size=2, seed=3, epochs=1)
    per_worker = [stream.worker_samples(0, w, 3) for w in range(3)]
    assert sorted(np.concatenate(per_worker).tolist()) == sorted(
        rank_samples(index, epoch=0, seed=3, rank=1, world_size=2).tolist()
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
    assert sum(len(labels) for _images, labels, _datasets in loader) == len(index) // 2
    # a second pass over persistent state continues with the next epoch rather than repeating the first
    single = ShardStreamDataset(
        index, reader, input_size=8, rank=0, world_size=1, seed=3, epochs=1, flip=False
    )
    first = [int(label) for _image, label, _d in single]
    second = [int(label) for _image, label, _d in single]
    assert sorted(first) == sorted(second) and first != second


def test_balanced_batches(store: ObjectStore, tmp_path: Path) -> None:
    entries = _three_datasets(store)
    loader = make_train_loader(
        entries,
        store_url=store.url,
        s3_endpoint_url=getattr(store, "endpoint_url", None),
        batch_size=6,
        input_size=8,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=2,
        cache_dir=tmp_path / "cache",
        cache_bytes=1 << 20,
        balanced=(2, 3),
        epochs=2,
    )
    batches = list(loader)
    assert len(batches) == 2 * (40 // 6)
    for images, labels, datasets in batches:
        assert images.shape == (6, 3, 8, 8)
        assert len(set(datasets.tolist())) == 1  # one dataset per batch: negatives stay within it
        counts = torch.bincount(labels)
        assert sorted(counts[counts > 0].tolist()) == [3, 3]
    with pytest.raises(InvalidInputError, match="batch_size"):
        make_train_loader(
            entries,
            store_url=store.url,
            s3_endpoint_url=None,
            batch_size=5,
            input_size=8,
            rank=0,
            world_size=1,
            num_workers=0,
            seed=2,
            cache_dir=tmp_path,
            cache_bytes=1,
            balanced=(2, 3),
        )


def test_balanced_batches_mix_datasets_in_groups_of_one_dataset(local_store: ObjectStore) -> None:
    index = SampleIndex(local_store, _three_datasets(local_store))  # 3, 5 and 2 identities
    sampler = BalancedBatchSampler(index, identities=4, images_per_identity=2, epochs=3)
    assert sampler.group_sizes == [2, 2]
    seen: set[int] = set()
    for batch in sampler:
        assert len(batch) == 8
        labels, datasets = index.label[batch], index.dataset[batch]
        groups = {int(d): len(set(labels[datasets == d].tolist())) for d in set(datasets.tolist())}
        assert sorted(groups.values()) == [2, 2]  # two groups of 2 identities, each from its own dataset
        seen |= set(groups)
    assert seen == {0, 1, 2}  # every dataset takes part


def test_balanced_ranks_own_disjoint_identities(local_store: ObjectStore) -> None:
    index = SampleIndex(local_store, _three_datasets(local_store))
    labels_by_rank = []
    for rank in (0, 1):
        sampler = BalancedBatchSampler(
            index, identities=2, images_per_identity=2, rank=rank, world_size=2, epochs=1
        )
        labels_by_rank.append({int(index.label[s]) for batch in sampler for s in batch})
    assert not labels_by_rank[0] & labels_by_rank[1]
    with pytest.raises(InvalidInputError, match="identities"):
        BalancedBatchSampler(index, identities=12, images_per_identity=2)  # no grouping can hold 12


def test_cache_stays_under_its_bound(store: ObjectStore, tmp_path: Path) -> None:
    entries = _three_datasets(store)
    shard_keys = SampleIndex(store, entries).shard_keys
    largest = max(store.size(key) for key in shard_keys)
    cache = ShardCache(tmp_path / "cache", max_bytes=2 * largest)
    for key in shard_keys:
        path = cache.fetch(store, key)
        assert path.read_bytes() == store.get_bytes(key)
        assert cache.cached_bytes() <= 2 * largest
    assert len(list((tmp_path / "cache").glob("*.tar"))) <= 2


def test_decode_normalises_and_flips() -> None:
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    plain = decode_image(buffer.getvalue(), 4)
    flipped = decode_image(buffer.getvalue(), 4, flip=True)
    assert plain.shape == (3, 4, 4) and float(plain.min()) == -1.0 and float(plain.max()) <= 1.0
    assert torch.equal(flipped, plain.flip(-1))


def test_verification_set_and_held_out_pairs(store: ObjectStore) -> None:
    entry = _pack(store, "verify", 4, 0)
    manifest = read_manifest(store, entry.manifest_key)
    pairs = pairs_within_dataset(manifest, 10, seed=0)
    labels = manifest["label"].to_pylist()
    assert len(pairs) == 10 and {p[2] for p in pairs} == {True, False}
    assert all((labels[left] == labels[right]) == same for left, right, same in pairs)
    assert pairs == pairs_within_dataset(manifest, 10, seed=0)
    pairs_key = write_pairs(store, "verify", 1, pairs)
    left, right, is_same = load_verification_set(store, entry.manifest_key, pairs_key, 8)
    assert left.shape == right.shape == (10, 3, 8, 8)
    assert is_same.tolist() == [p[2] for p in pairs]
    same_colour = (left[:, 0].mean((1, 2)) - right[:, 0].mean((1, 2))).abs() < 0.03
    assert same_colour.tolist() == is_same.tolist()


def test_label_space_for_versions_needs_ready_versions(session) -> None:  # type: ignore[no-untyped-def]
    from facefleet.platform.db.models import Dataset, DatasetVersion
    from facefleet.workers.data import label_space_for_versions

    versions = []
    for name, classes, status in [("alpha", 4, "ready"), ("beta", 6, "ready"), ("gamma", 2, "validating")]:
        dataset = Dataset(name=name)
        session.add(dataset)
        session.flush()
        version = DatasetVersion(
            dataset_id=dataset.id,
            version=1,
            source_uri="x",
            format="imagefolder",
            status=status,
            identity_count=classes,
            image_count=classes * 3,
            content_hash=name,
            manifest_key=f"datasets/{name}/1/manifest.parquet",
        )
        session.add(version)
        session.flush()
        versions.append(version.id)
    space = label_space_for_versions(session, [versions[1], versions[0]])
    assert [(e.dataset_name, e.class_offset, e.num_classes) for e in space] == [
        ("beta", 0, 6),
        ("alpha", 6, 4),
    ]
    with pytest.raises(InvalidInputError, match="gamma@1"):
        label_space_for_versions(session, versions)
