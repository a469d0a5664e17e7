"""A DataLoader that receives its batches from the worker processes on a background thread, ahead of use."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader


class _PumpFailure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END_OF_BATCHES = object()


def _pump_batches(batches: Iterator[Any], out: queue.Queue[Any], stop: threading.Event) -> None:
    """Thread body: move batches (then the end marker or the error) into ``out`` until told to stop."""
    item: Any = _END_OF_BATCHES
    try:
        for batch in batches:
            while not stop.is_set():
                try:
                    out.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
    except BaseException as error:  # a worker's error reaches the consumer, as without the thread
        item = _PumpFailure(error)
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


class _BackgroundBatches:
    """Iterator over batches that a daemon thread receives ahead; stops the thread when closed or freed
    (the thread holds no reference to this object, so dropping it releases the DataLoader workers)."""

    def __init__(self, batches: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_pump_batches, args=(batches, self._queue, self._stop), name="batch-prefetch", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> _BackgroundBatches:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END_OF_BATCHES or isinstance(item, _PumpFailure):
            self._done = True
            if isinstance(item, _PumpFailure):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()


class PrefetchingDataLoader(DataLoader):
    """A DataLoader whose batches a background thread receives from the worker processes ahead of use.

    Receiving a ready batch is a chain of inter-process round trips (the result pipe, then a socket round
    trip per tensor for its shared-memory file descriptor), each waiting until the worker process is
    scheduled again. With more busy processes than cores (2 training ranks + their loaders on 2 cores)
    that cost ~3-5 ms per batch even with the worker's prefetch queue full, ~10% of a step. The thread
    takes it off the training step's critical path (torch releases the GIL while it computes).
    """

    prefetch_batches = 2

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        previous = getattr(self, "_background", None)
        if previous is not None:  # persistent workers: one consumer of their iterator at a time
            previous.close()
        batches = super().__iter__()
        if self.num_workers == 0:
            return batches
        self._background = _BackgroundBatches(batches, self.prefetch_batches)
        return self._background
