"""FileStore: snapshots as files under one directory (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway import errors

T = TypeVar("T")


class FileStore:
    name = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    async def put(self, key: str, source: Path) -> None:
        await self._run(self._put, key, source)

    def _put(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # readers see the whole file or none

    async def get(self, key: str, dest: Path, max_bytes: int) -> bool:
        return await self._run(self._get, key, dest, max_bytes)

    def _get(self, key: str, dest: Path, max_bytes: int) -> bool:
        try:
            with open(self._path(key), "rb") as src:
                if os.fstat(src.fileno()).st_size > max_bytes:
                    return False
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        except FileNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._run(self._delete, key)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):  # its session's directory, once empty
            path.parent.rmdir()

    async def older_than(self, cutoff: datetime) -> list[str]:
        return await self._run(self._older_than, cutoff)

    def _older_than(self, cutoff: datetime) -> list[str]:
        found: list[str] = []
        if not self.root.is_dir():
            return found
        limit = cutoff.timestamp()
        for path in self.root.glob("*/*/*.tar"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    found.append(str(path.relative_to(self.root)))
        return found

    async def close(self) -> None:
        return None

    @staticmethod
    async def _run(func: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise errors.SnapshotStoreUnavailable(
                f"snapshot store: {type(exc).__name__}: {exc.strerror or exc}") from exc
