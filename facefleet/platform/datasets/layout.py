"""Where a dataset version's objects live in the store (design.md §4), for writer and readers alike."""

from __future__ import annotations

from facefleet.platform.store.base import validate_key


def version_prefix(dataset_name: str, version: int) -> str:
    return validate_key(f"datasets/{dataset_name}/{version}")


def manifest_key(dataset_name: str, version: int) -> str:
    """Parquet, one row per image: shard, member, identity, label, sha256, width, height."""
    return f"{version_prefix(dataset_name, version)}/manifest.parquet"


def pairs_key(dataset_name: str, version: int) -> str:
    """Parquet, one row per verification pair: left, right (row numbers in the manifest), is_same."""
    return f"{version_prefix(dataset_name, version)}/pairs.parquet"


def report_key(dataset_name: str, version: int) -> str:
    return f"{version_prefix(dataset_name, version)}/validation_report.json"


def shard_key(dataset_name: str, version: int, shard_index: int) -> str:
    return f"{version_prefix(dataset_name, version)}/shards/{shard_index:05d}.tar"


def landmarks_key(dataset_name: str, version: int) -> str:
    """Parquet, one row per image of a landmarks dataset: member, split, five points, face box."""
    return f"{version_prefix(dataset_name, version)}/landmarks.parquet"


def alignment_key(dataset_name: str, version: int) -> str:
    """JSON list: each attempted image's alignment outcome (status, faces found, box, five points)."""
    return f"{version_prefix(dataset_name, version)}/alignment.json"
