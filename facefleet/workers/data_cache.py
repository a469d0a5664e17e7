"""Random access to image bytes inside shards: local files directly, S3 via a bounded LRU disk cache."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from facefleet.platform.store import ObjectStore, store_from_url
from facefleet.platform.store.local import LocalStore


class ShardCache:
    """Whole shards downloaded into ``directory``; least recently used ones are deleted past ``max_bytes``.

    Several DataLoader processes may share one directory: downloads are atomic (temp file + rename) and a
    shard another process evicts while we read it stays readable through our open handle (POSIX unlink).
    The bound is on files in the directory; a single shard larger than the bound is still kept while used.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("cache max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)

    def path_for(self, store_url: str, key: str) -> Path:
        digest = hashlib.sha256(f"{store_url}\n{key}".encode()).hexdigest()[:32]
        return self.directory / f"{digest}.tar"

    def fetch(self, store: ObjectStore, key: str) -> Path:
        """Local path of the shard, downloading it on a miss; marks it most recently used."""
        path = self.path_for(store.url, key)
        try:
            os.utime(path)  # mtime is the LRU clock (atime is unreliable under noatime mounts)
            return path
        except FileNotFoundError:
            pass
        store.get_file(key, path)
        self.evict(keep=path)
        return path

    def cached_bytes(self) -> int:
        return sum(size for _mtime, size, _path in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        for path in self.directory.glob("*.tar"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
        return sorted(entries)

    def evict(self, keep: Path | None = None) -> None:
        entries = self._entries()
        total = sum(size for _mtime, size, _path in entries)
        for _mtime, size, path in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size


class ShardReader:
    """Reads byte ranges of shards. Picklable before use: each DataLoader process opens its own store."""

    def __init__(
        self,
        store_url: str,
        *,
        s3_endpoint_url: str | None = None,
        cache_dir: Path | None = None,
        cache_bytes: int = 2 << 30,
        max_open_files: int = 16,
    ) -> None:
        self.store_url = store_url
        self.s3_endpoint_url = s3_endpoint_url
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_bytes = cache_bytes
        self.max_open_files = max_open_files
        self._store: ObjectStore | None = None
        self._cache: ShardCache | None = None
        self._handles: OrderedDict[str, BinaryIO] = OrderedDict()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state.update(_store=None, _cache=None, _handles=OrderedDict())
        return state

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = store_from_url(self.store_url, endpoint_url=self.s3_endpoint_url)
        return self._store

    def _local_path(self, key: str) -> Path:
        store = self.store
        if isinstance(store, LocalStore):
            return store.local_path(key)
        if self._cache is None:
            if self.cache_dir is None:
                raise ValueError(f"a cache_dir is needed to read shards from {self.store_url}")
            self._cache = ShardCache(self.cache_dir, self.cache_bytes)
        return self._cache.fetch(store, key)

    def _handle(self, key: str) -> BinaryIO:
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        try:
            handle = open(self._local_path(key), "rb")
        except FileNotFoundError:  # evicted between fetch and open by another process: fetch again
            handle = open(self._local_path(key), "rb")
        self._handles[key] = handle
        while len(self._handles) > self.max_open_files:
            _key, old = self._handles.popitem(last=False)
            old.close()
        return handle

    def read(self, key: str, offset: int, size: int) -> bytes:
        handle = self._handle(key)
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise OSError(f"shard {key} is shorter than the manifest says (offset {offset}, size {size})")
        return data

    def close(self) -> None:
        while self._handles:
            self._handles.popitem()[1].close()
