"""The SnapshotStore protocol: where hibernated sessions' snapshots live, chosen by
``snapshot_url`` (``file`` here, ``s3`` for any S3-compatible store shared by replicas).

A snapshot is one opaque tar file. Its key starts with a hash of the API key's name, then the
session id and a token unique to that hibernation: every verb of the session layer derives
keys from the authenticated caller, so one key never reads, lists or overwrites another's.
Its integrity is anchored in the registry (``SnapshotRef.sha256``), not in the store.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from gateway.settings import Settings


class SnapshotRef(BaseModel):
    """What a hibernated session's registry record says about its snapshot."""

    key: str
    sha256: str  # of the whole file: checked before anything of it reaches a kernel
    bytes: int
    created_at: datetime


def owner_prefix(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def new_key(owner: str, session_id: str) -> str:
    """A key no earlier hibernation of this session used (a stale ref never reads a newer
    snapshot)."""
    return f"{owner_prefix(owner)}/{session_id}/{secrets.token_hex(8)}.tar"


class SnapshotStore(Protocol):
    name: str

    async def put(self, key: str, source: Path) -> None:
        """Store the file ``source`` under ``key``. Raises SnapshotStoreUnavailable."""

    async def get(self, key: str, dest: Path, max_bytes: int) -> bool:
        """Copy ``key`` to ``dest``; False if there is none or it is over ``max_bytes``.
        Raises SnapshotStoreUnavailable."""

    async def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine). Raises SnapshotStoreUnavailable."""

    async def older_than(self, cutoff: datetime) -> list[str]:
        """Keys of snapshots last written before ``cutoff`` (the retention sweep)."""

    async def close(self) -> None: ...


def make_store(settings: Settings) -> SnapshotStore:
    """The store ``snapshot_url`` names (boto3 is imported only for s3://)."""
    url = settings.snapshot_url or (settings.work_dir / "snapshots").as_uri()
    if url.startswith("file://"):
        from gateway.snapshots.file import FileStore

        return FileStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        from gateway.snapshots.s3 import S3Store

        return S3Store(settings, url)
    raise ValueError(f"unsupported snapshot_url scheme: {url.split(':')[0]!r}")
