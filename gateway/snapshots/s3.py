"""S3Store: snapshots in any S3-compatible store (``s3://bucket/prefix``), so a session
hibernated by one replica is restored by another. boto3 calls run in threads, each with
``snapshot_timeout_s`` as its deadline; botocore's errors become SnapshotStoreUnavailable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from gateway import errors
from gateway.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    name = "s3"

    def __init__(self, settings: Settings, url: str) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._timeout_s = settings.snapshot_timeout_s
        secret = settings.snapshot_s3_secret_access_key
        # unset values (None) fall back to boto3's own chain: AWS_* variables, ~/.aws files
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=settings.snapshot_s3_endpoint_url,
            region_name=settings.snapshot_s3_region,
            aws_access_key_id=settings.snapshot_s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
            config=botocore.config.Config(
                connect_timeout=min(10.0, self._timeout_s), read_timeout=self._timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"}))

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def put(self, key: str, source: Path) -> None:
        await self._run(self._client.upload_file, str(source), self.bucket, self._key(key))

    async def get(self, key: str, dest: Path, max_bytes: int) -> bool:
        try:
            head = await self._run(self._client.head_object, Bucket=self.bucket,
                                   Key=self._key(key))
        except _Missing:
            return False
        if int(head.get("ContentLength", 0)) > max_bytes:
            return False
        try:
            await self._run(self._client.download_file, self.bucket, self._key(key), str(dest))
        except _Missing:
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._run(self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def older_than(self, cutoff: datetime) -> list[str]:
        return await self._run(self._older_than, cutoff)

    def _older_than(self, cutoff: datetime) -> list[str]:
        found: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                if item["LastModified"] < cutoff and item["Key"].endswith(".tar"):
                    found.append(item["Key"][len(self.prefix):])
        return found

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def _run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``func`` in a thread within the deadline (the thread is left to finish alone)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(func, *args, **kwargs),
                                          self._timeout_s)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise _Missing from exc
            raise errors.SnapshotStoreUnavailable(f"snapshot store: {code or 'error'}") from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise errors.SnapshotStoreUnavailable(
                f"snapshot store unreachable: {type(exc).__name__}") from exc
        except TimeoutError as exc:
            raise errors.SnapshotStoreUnavailable(
                f"snapshot store: no answer within {self._timeout_s:g}s") from exc


class _Missing(Exception):
    """The object is not there (S3 404)."""
