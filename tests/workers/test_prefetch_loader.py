"""PrefetchingDataLoader: same batches as a DataLoader, errors re-raised, restarts, threads released."""

from __future__ import annotations

import gc
import threading

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from facefleet.workers.prefetch import PrefetchingDataLoader


class Squares(Dataset):
    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.size, self.fail_at = size, fail_at

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.fail_at:
            raise ValueError(f"broken sample {index}")
        return torch.tensor([index * index])


def prefetch_threads() -> int:
    return sum(thread.name == "batch-prefetch" for thread in threading.enumerate())


def test_same_batches_in_order_and_a_second_pass_with_persistent_workers() -> None:
    expected = [batch.tolist() for batch in DataLoader(Squares(23), batch_size=4)]
    loader = PrefetchingDataLoader(Squares(23), batch_size=4, num_workers=1, persistent_workers=True)
    assert [batch.tolist() for batch in loader] == expected
    second = iter(loader)
    assert next(second).tolist() == expected[0]  # abandon the pass early, then start again
    assert [batch.tolist() for batch in loader] == expected
    del loader, second
    gc.collect()


def test_worker_errors_reach_the_consumer() -> None:
    loader = PrefetchingDataLoader(Squares(12, fail_at=9), batch_size=4, num_workers=1)
    batches = iter(loader)
    assert next(batches).tolist() == [[0], [1], [4], [9]]
    with pytest.raises(ValueError, match="broken sample 9"):
        list(batches)
    with pytest.raises(StopIteration):
        next(batches)


def test_dropping_an_unfinished_iterator_stops_its_thread() -> None:
    before = prefetch_threads()
    loader = PrefetchingDataLoader(Squares(400), batch_size=2, num_workers=1)
    batches = iter(loader)
    next(batches)
    assert prefetch_threads() == before + 1
    del loader, batches
    gc.collect()
    for _ in range(50):
        if prefetch_threads() == before:
            break
        threading.Event().wait(0.1)
    assert prefetch_threads() == before
