"""Training data pipeline: sharded, streamed image loading over a run's label space (label_space.py).

Each Ray worker (rank of world_size) reads only its slice of the shards; inside a rank the DataLoader
processes split that slice again, read whole shards in order (shard locality: a shard is fetched from the
store once per epoch) and shuffle within a window of samples. Every sample yields
(image [3,H,W] float32 in [-1, 1], global label int64, dataset index int64).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from facefleet.platform.datasets.shards import read_manifest, read_pairs
from facefleet.platform.errors import InvalidInputError
from facefleet.platform.store import ObjectStore, store_from_url
from facefleet.workers.data_cache import ShardReader

# The label space and the sample index live in label_space.py; re-exported for callers of data.py.
from facefleet.workers.label_space import LabelSpaceEntry as LabelSpaceEntry
from facefleet.workers.label_space import SampleIndex as SampleIndex
from facefleet.workers.label_space import build_label_space as build_label_space
from facefleet.workers.label_space import label_space_for_versions as label_space_for_versions
from facefleet.workers.prefetch import PrefetchingDataLoader
from facefleet.workers.sampler import BalancedBatchSampler


def decode_image(data: bytes, input_size: int, *, flip: bool = False) -> torch.Tensor:
    """JPEG/PNG/PGM bytes -> RGB [3, size, size] float32 in [-1, 1]."""
    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (input_size, input_size))  # JPEG: decode at reduced scale when much larger
        image = source.convert("RGB")
        if image.size != (input_size, input_size):
            image = image.resize((input_size, input_size), Image.Resampling.BILINEAR)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return pixels.permute(2, 0, 1).float().sub_(127.5).div_(127.5)


def rank_samples(
    index: SampleIndex, *, epoch: int, seed: int, rank: int, world_size: int, even: bool = True
) -> np.ndarray:
    """This rank's sample ids for an epoch: shards shuffled per epoch, cut into world_size runs.

    With ``even`` every rank gets total // world_size samples (DDP needs equal step counts); up to
    world_size - 1 samples, different each epoch, are left out. Whole shards go to one rank where possible.
    """
    rng = np.random.default_rng([seed, epoch])
    starts = index.shard_starts
    ordered = [np.arange(starts[s], starts[s + 1]) for s in rng.permutation(len(index.shard_keys))]
    order = np.concatenate(ordered) if ordered else np.zeros(0, np.int64)
    if even:
        per_rank = len(order) // world_size
        return order[rank * per_rank : (rank + 1) * per_rank]
    return np.array_split(order, world_size)[rank]


class ShardStreamDataset(IterableDataset):
    """Streams this rank's samples, epoch after epoch (``epochs=None``: forever), decoded and augmented."""

    def __init__(
        self,
        index: SampleIndex,
        reader: ShardReader,
        *,
        input_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epochs: int | None = None,
        start_epoch: int = 0,
        shuffle_window: int = 4096,
        flip: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.index, self.reader, self.input_size = index, reader, input_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epochs, self.start_epoch, self.shuffle_window, self.flip = (
            epochs,
            start_epoch,
            shuffle_window,
            flip,
        )
        self._passes = (
            0  # iterations started by this copy: persistent DataLoader workers continue, not repeat
        )

    def samples_per_epoch(self) -> int:
        return len(self.index) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Start at ``epoch`` (takes effect on the next ``iter``; persistent workers: before the first)."""
        self.start_epoch = epoch
        self._passes = 0

    def worker_samples(self, epoch: int, worker: int, num_workers: int) -> np.ndarray:
        """This DataLoader process's share of the rank's samples, window-shuffled."""
        mine = np.array_split(
            rank_samples(self.index, epoch=epoch, seed=self.seed, rank=self.rank, world_size=self.world_size),
            num_workers,
        )[worker]
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        windows = [
            rng.permutation(mine[i : i + self.shuffle_window])
            for i in range(0, len(mine), self.shuffle_window)
        ]
        return np.concatenate(windows) if windows else mine

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        first = self.start_epoch + self._passes * (self.epochs or 0)
        self._passes += 1
        epoch = first
        while self.epochs is None or epoch < first + self.epochs:
            rng = np.random.default_rng([self.seed, epoch, self.rank, worker, 1])
            for sample in self.worker_samples(epoch, worker, num_workers):
                yield self.load(int(sample), flip=self.flip and bool(rng.random() < 0.5))
            epoch += 1

    def load(self, sample: int, *, flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = self.index
        data = self.reader.read(
            index.shard_keys[index.shard[sample]], int(index.offset[sample]), int(index.size[sample])
        )
        image = decode_image(data, self.input_size, flip=flip)
        return image, torch.tensor(index.label[sample]), torch.tensor(index.dataset[sample])


class ShardMapDataset(Dataset):
    """Random access by sample id (for the identity-balanced sampler); flips with torch's per-worker RNG."""

    def __init__(self, stream: ShardStreamDataset) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream.index)

    def __getitem__(self, sample: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flip = self.stream.flip and bool(torch.rand(()) < 0.5)
        return self.stream.load(int(sample), flip=flip)


def make_train_loader(
    entries: Sequence[LabelSpaceEntry],
    *,
    store_url: str,
    s3_endpoint_url: str | None,
    batch_size: int,
    input_size: int,
    rank: int,
    world_size: int,
    num_workers: int,
    seed: int,
    cache_dir: Path,
    cache_bytes: int,
    balanced: tuple[int, int] | None = None,
    epochs: int | None = None,
    start_epoch: int = 0,
) -> DataLoader:
    """A DataLoader of (images, global labels, dataset indices) for this rank; see module docstring.

    ``balanced=(P, K)``: batches of P identities x K images, all identities of a batch from one dataset
    (batch_size must equal P*K). ``epochs=None`` iterates forever; the caller counts steps.
    """
    if balanced is not None and balanced[0] * balanced[1] != batch_size:
        raise InvalidInputError(
            f"balanced batches of {balanced[0]} identities x {balanced[1]} images hold"
            f" {balanced[0] * balanced[1]}"
            f" images, but batch_size is {batch_size}; make them equal",
            field="batch_size",
        )
    entries = [LabelSpaceEntry.model_validate(entry) for entry in entries]  # dicts after a JSON round trip
    store = store_from_url(store_url, endpoint_url=s3_endpoint_url)
    index = SampleIndex(store, entries)
    if len(index) < world_size:
        raise InvalidInputError(f"{len(index)} images cannot feed {world_size} workers")
    reader = ShardReader(
        store_url, s3_endpoint_url=s3_endpoint_url, cache_dir=cache_dir, cache_bytes=cache_bytes
    )
    stream = ShardStreamDataset(
        index,
        reader,
        input_size=input_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epochs=epochs,
        start_epoch=start_epoch,
    )
    common: dict[str, Any] = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    if num_workers > 0:
        common["prefetch_factor"] = 4
    if balanced is None:
        return PrefetchingDataLoader(stream, batch_size=batch_size, drop_last=True, **common)
    identities, per_identity = balanced
    sampler = BalancedBatchSampler(
        index,
        identities=identities,
        images_per_identity=per_identity,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epochs=epochs,
        start_epoch=start_epoch,
    )
    return PrefetchingDataLoader(ShardMapDataset(stream), batch_sampler=sampler, **common)


# ---------------------------------------------------------------- verification pairs


def pairs_within_dataset(manifest: pa.Table, num_pairs: int, seed: int) -> list[tuple[int, int, bool]]:
    """Seeded same/different pairs (manifest row numbers) from one dataset's manifest, half of each kind."""
    labels = manifest["label"].to_numpy()
    rng = np.random.default_rng([seed, 3])
    rows_by_label = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    multi = [rows for rows in rows_by_label if len(rows) >= 2]
    if not multi or len(rows_by_label) < 2:
        raise InvalidInputError("held-out pairs need two identities and one identity with two images")
    pairs: set[tuple[int, int, bool]] = set()
    for attempt in range(num_pairs * 20):  # bounded: a small dataset may hold fewer distinct pairs
        if len(pairs) >= num_pairs:
            break
        if attempt % 2 == 0:
            left, right = rng.choice(multi[int(rng.integers(len(multi)))], 2, replace=False)
        else:
            first, second = rng.choice(len(rows_by_label), 2, replace=False)
            left, right = rng.choice(rows_by_label[first]), rng.choice(rows_by_label[second])
        pairs.add((int(min(left, right)), int(max(left, right)), bool(attempt % 2 == 0)))
    return sorted(pairs)


def load_manifest_images(
    store: ObjectStore, manifest: pa.Table, rows: Sequence[int], input_size: int
) -> torch.Tensor:
    """Decode the given manifest rows (no augmentation), fetching each shard once: [len(rows), 3, H, W]."""
    shards, offsets, sizes = (
        manifest["shard"].to_pylist(),
        manifest["offset"].to_pylist(),
        manifest["size"].to_pylist(),
    )
    images = torch.empty(len(rows), 3, input_size, input_size)
    by_shard: dict[str, list[int]] = {}
    for position, row in enumerate(rows):
        by_shard.setdefault(shards[row], []).append(position)
    for shard, positions in by_shard.items():
        data = store.get_bytes(shard)
        for position in positions:
            row = rows[position]
            images[position] = decode_image(data[offsets[row] : offsets[row] + sizes[row]], input_size)
    return images


def load_verification_pairs(
    store: ObjectStore, manifest: str | pa.Table, pairs: Sequence[tuple[int, int, bool]], input_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left [P,3,H,W], right [P,3,H,W], is_same [P] bool) for pairs of manifest row numbers; ``manifest``
    is its key in the store or the table already read."""
    if isinstance(manifest, str):
        manifest = read_manifest(store, manifest)
    unique_rows = sorted({row for pair in pairs for row in pair[:2]})
    if unique_rows and (unique_rows[0] < 0 or unique_rows[-1] >= manifest.num_rows):
        raise InvalidInputError(f"pairs refer to rows outside the manifest's {manifest.num_rows} images")
    images = load_manifest_images(store, manifest, unique_rows, input_size)
    position = {row: i for i, row in enumerate(unique_rows)}
    left = torch.tensor([position[p[0]] for p in pairs], dtype=torch.long)
    right = torch.tensor([position[p[1]] for p in pairs], dtype=torch.long)
    return images[left], images[right], torch.tensor([bool(p[2]) for p in pairs], dtype=torch.bool)


def load_verification_set(
    store: ObjectStore, manifest_key: str, pairs_key: str, input_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A registered verification set (manifest + pairs parquet) as (left, right, is_same) tensors."""
    return load_verification_pairs(store, manifest_key, read_pairs(store, pairs_key), input_size)
