"""Build the configured store from a URL: file:///path, a plain path, or s3://bucket/prefix."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from facefleet.platform.settings import Settings, get_settings
from facefleet.platform.store.base import ObjectStore


def store_from_url(url: str, *, endpoint_url: str | None = None, region: str = "us-east-1") -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from facefleet.platform.store.s3 import S3Store

        if not parsed.netloc:
            raise ValueError(f"store URL {url!r} has no bucket; use s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path.lstrip("/"), endpoint_url=endpoint_url, region=region)
    if parsed.scheme in ("file", ""):
        from facefleet.platform.store.local import LocalStore

        path = unquote(parsed.path) if parsed.scheme == "file" else url
        return LocalStore(Path(path))
    raise ValueError(f"unsupported store URL {url!r}: use file:///path or s3://bucket/prefix")


def get_store(settings: Settings | None = None) -> ObjectStore:
    settings = settings or get_settings()
    return store_from_url(
        settings.effective_store_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
