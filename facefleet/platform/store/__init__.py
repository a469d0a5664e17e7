"""Object store: one small interface, a local-folder and an S3 implementation."""

from facefleet.platform.store.base import InvalidKeyError, ObjectNotFoundError, ObjectStore, validate_key
from facefleet.platform.store.factory import get_store, store_from_url

__all__ = [
    "InvalidKeyError",
    "ObjectNotFoundError",
    "ObjectStore",
    "get_store",
    "store_from_url",
    "validate_key",
]
