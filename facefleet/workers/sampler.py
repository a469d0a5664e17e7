"""Identity-balanced batches (design.md §5.4): P identities x K images, in groups of one dataset each.

Negative pairs may only be formed within one dataset (across datasets two labels can be the same person),
so the P identities come in groups (at least 2 identities each), every group from a single dataset, and
pairs are formed within a group's dataset (`make_pairs`). Mixing several datasets' groups in one batch
keeps the dataset classifier of the reversal stage from seeing one-dataset batches, which made its signal
(and its accuracy) swing from batch to batch. Ranks own disjoint identity subsets, so each rank reads
mostly its own shards (images of one identity are packed together).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from facefleet.platform.errors import InvalidInputError
from facefleet.workers.label_space import SampleIndex


class BalancedBatchSampler(Sampler[list[int]]):
    """Yields lists of P*K sample ids; K images per identity, with replacement only when it has fewer."""

    def __init__(
        self,
        index: SampleIndex,
        *,
        identities: int,
        images_per_identity: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epochs: int | None = None,
        start_epoch: int = 0,
    ) -> None:
        if identities < 2 or images_per_identity < 2:
            raise InvalidInputError(
                "balanced batches need at least 2 identities x 2 images (for same and different pairs)",
                field="balanced",
            )
        self.identities, self.images_per_identity = identities, images_per_identity
        self.rank, self.seed, self.epochs, self.start_epoch = rank, seed, epochs, start_epoch
        self._passes = 0
        self.groups = self._identity_groups(index, rank, world_size)  # dataset -> [sample ids per identity]
        self.group_sizes, self.datasets = self._plan_groups(identities, world_size)
        sizes = np.array([sum(len(ids) for ids in self.groups[d]) for d in self.datasets], dtype=np.float64)
        self.dataset_weights = sizes / sizes.sum()
        self.batches_per_epoch = max(1, len(index) // (world_size * identities * images_per_identity))

    @staticmethod
    def _identity_groups(index: SampleIndex, rank: int, world_size: int) -> dict[int, list[np.ndarray]]:
        order = np.lexsort((np.arange(len(index)), index.label))
        labels = index.label[order]
        starts = (
            np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
        )
        bounds = np.r_[starts, len(labels)]
        groups: dict[int, list[np.ndarray]] = {}
        per_dataset_position: dict[int, int] = {}
        for i, start in enumerate(starts):
            dataset = int(index.dataset[order[start]])
            position = per_dataset_position.get(dataset, 0)
            per_dataset_position[dataset] = position + 1
            if position % world_size == rank:
                groups.setdefault(dataset, []).append(order[start : bounds[i + 1]])
        return groups

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless balanced sampler has no length")
        return self.batches_per_epoch * self.epochs

    def set_epoch(self, epoch: int) -> None:
        self.start_epoch, self._passes = epoch, 0

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start_epoch + self._passes * (self.epochs or 0)
        self._passes += 1
        epoch = first
        while self.epochs is None or epoch < first + self.epochs:
            rng = np.random.default_rng([self.seed, epoch, self.rank, 2])
            for _ in range(self.batches_per_epoch):
                yield self._batch(rng)
            epoch += 1

    def _plan_groups(self, identities: int, world_size: int) -> tuple[list[int], list[int]]:
        """(group sizes, datasets to draw groups from): as many groups of >= 2 identities as datasets can
        fill, each dataset holding at least the largest group's identities on this rank."""
        for count in range(max(1, min(len(self.groups), identities // 2)), 0, -1):
            sizes = [len(part) for part in np.array_split(np.arange(identities), count)]
            eligible = sorted(d for d, g in self.groups.items() if len(g) >= max(sizes))
            if len(eligible) >= count:
                return sizes, eligible
        raise InvalidInputError(
            f"no dataset has {identities} identities for each of {world_size} workers; lower P or the "
            f"number of workers",
            field="balanced",
        )

    def _batch(self, rng: np.random.Generator) -> list[int]:
        chosen = rng.choice(len(self.datasets), len(self.group_sizes), replace=False, p=self.dataset_weights)
        batch: list[int] = []
        for dataset_position, size in zip(chosen, self.group_sizes, strict=True):
            group = self.groups[self.datasets[int(dataset_position)]]
            for identity in rng.choice(len(group), size, replace=False):
                samples = group[int(identity)]
                picks = rng.choice(
                    samples, self.images_per_identity, replace=len(samples) < self.images_per_identity
                )
                batch.extend(int(s) for s in picks)
        return batch
