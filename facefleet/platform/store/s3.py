"""S3 / MinIO object store over boto3. S3 PUTs are atomic by nature; multipart uploads complete at once."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from facefleet.platform.store.base import ObjectNotFoundError, ObjectStore, validate_key, validate_prefix


def is_missing(error: ClientError) -> bool:
    """Whether S3 answered that the object or bucket does not exist (the one reading of its error codes)."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        create_bucket: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        )
        if create_bucket:
            self.ensure_bucket()

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _not_found_as(self, key: str) -> Iterator[None]:
        """S3's "no such object" as ObjectNotFoundError naming the key; other errors as they are."""
        try:
            yield
        except ClientError as error:
            if is_missing(error):
                raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from None
            raise

    def _strip(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, **extra)

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        self.client.upload_file(str(path), self.bucket, self._full(key), ExtraArgs=extra or None)

    def get_bytes(self, key: str) -> bytes:
        with self._not_found_as(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        return response["Body"].read()

    def get_file(self, key: str, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            with self._not_found_as(key):
                self.client.download_file(self.bucket, self._full(key), tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open_stream(self, key: str) -> BinaryIO:
        with self._not_found_as(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        return response["Body"]  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as error:
            if is_missing(error):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        with self._not_found_as(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        return int(head["ContentLength"])

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(self._strip(item["Key"]) for item in page.get("Contents", []))
        except ClientError as error:
            if is_missing(error):
                return []
            raise
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._full(key)},
                ExpiresIn=expires_seconds,
            )
        )

    def pyarrow_storage(self) -> tuple[str, object | None]:
        from pyarrow import fs

        kwargs: dict[str, object] = {"region": self.region}
        if self.endpoint_url:
            parsed = urlparse(self.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "http"
        filesystem = fs.S3FileSystem(**kwargs)
        return f"{self.bucket}/{self.prefix}".rstrip("/"), filesystem
