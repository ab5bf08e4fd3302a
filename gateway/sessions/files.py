"""SessionFiles: the files API's verbs on a located session's workspace, and what a cell
changed in it.

Every call runs the blocking ``Workspace`` operations in a thread and never takes the
session's turn: files move while a cell runs. Each change made through the API is published
to the session's WebSocket watchers as a ``file_changed`` event, and so is each file a cell
wrote. Metrics: bytes up and down, the workspace's usage per session, quota hits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from gateway import errors
from gateway.metrics import Metrics
from gateway.models import ErrorInfo, FileInfo, FileList
from gateway.sessions.session import Session
from gateway.settings import Settings
from gateway.volumes import Volumes
from gateway.workspace import Upload, Workspace

log = logging.getLogger(__name__)

CHANGED_LIMIT = 100  # files_changed lists at most this many (then files_changed_truncated)
READ_CHUNK = 1024 * 1024
WRITE_BATCH = 1024 * 1024
_CLOCK_REALTIME_COARSE = 5  # Linux's clock id (the time module does not name it)


def now_ns() -> int:
    """The clock file timestamps come from: the coarse real-time clock, so a file written
    after this moment never carries an earlier timestamp."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


class PendingUpload:
    """An upload in progress: its bytes are bounded by ``max_upload_bytes`` (413) and, where
    no filesystem quota bounds the workspace, by the room ``disk_mb`` leaves (507). One
    thread at a time works on its file (``start``/``settle``); ``abort`` waits for it, so a
    closed fd is never written to."""

    def __init__(self, upload: Upload, max_bytes: int, room: int | None) -> None:
        self.upload = upload
        self.max_bytes = max_bytes
        self.room = room
        self.batch: list[bytes] = []  # received, not written yet (up to WRITE_BATCH bytes)
        self.batched = 0
        self._busy: asyncio.Future[Any] | None = None  # a thread working on the file

    def start(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a thread; its outcome is for the next ``settle``."""
        assert self._busy is None or self._busy.done()
        self._busy = asyncio.ensure_future(asyncio.to_thread(func, *args))
        self._busy.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def settle(self) -> Any:
        """The outcome of the thread's work (raises its error); None if none was started."""
        busy, self._busy = self._busy, None
        return None if busy is None else await asyncio.shield(busy)

    def abort(self) -> None:
        busy = self._busy
        if busy is not None and not busy.done():
            busy.add_done_callback(lambda _: self.upload.abort())
        else:
            self.upload.abort()

    def write(self, data: bytes) -> None:
        """Runs in a thread. Raises PayloadTooLarge, WorkspaceFull (aborted then)."""
        size = self.upload.size + len(data)
        if size > self.max_bytes:
            self.upload.abort()
            raise errors.PayloadTooLarge(f"the file is larger than max_upload_bytes="
                                         f"{self.max_bytes}")
        if self.room is not None and size > self.room:
            self.upload.abort()
            raise errors.WorkspaceFull("the session's workspace is full (disk_mb)")
        self.upload.write(data)


class SessionFiles:
    def __init__(self, settings: Settings, metrics: Metrics, volumes: Volumes,
                 owner: tuple[int, int] | None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._volumes = volumes
        self._owner = owner  # who the gateway's files belong to (the sandbox's user)

    def workspace(self, session: Session) -> Workspace:
        """Raises FileNotFound while the session has no workspace (its first kernel starts)."""
        if not session.workspace:
            raise errors.FileNotFound("the session has no workspace yet")
        session.touch()  # a file call is activity: the idle reaper keeps the session
        return Workspace(session.workspace, self._owner)

    # ------------------------------------------------------------------ reading
    async def listing(self, session: Session, path: str, *, recursive: bool) -> FileList:
        workspace = self.workspace(session)
        files, truncated = await asyncio.to_thread(
            workspace.list, path, recursive=recursive, limit=self._settings.max_list_entries)
        return FileList(files=files, truncated=truncated)

    async def open_read(self, session: Session, path: str) -> tuple[int, FileInfo]:
        """An fd to read (the caller closes it) and the file's info. Raises FileNotFound,
        NotAFile, NotADirectory, InvalidPath."""
        return await asyncio.to_thread(self.workspace(session).open_read, path)

    async def read(self, fd: int, most: int = READ_CHUNK) -> bytes:
        data = await asyncio.to_thread(os.read, fd, min(most, READ_CHUNK))
        self._metrics.file_bytes.labels("down").inc(len(data))
        return data

    # ------------------------------------------------------------------ writing
    async def begin_upload(self, session: Session, path: str | None, length: int | None
                           ) -> PendingUpload:
        """Start an upload (to ``path``, checked now, when known); ``length``: the announced
        size, refused at once when too large. Raises PayloadTooLarge, WorkspaceFull,
        InvalidPath, NotAFile, NotADirectory."""
        limit = self._settings.max_upload_bytes
        if length is not None and length > limit:
            raise errors.PayloadTooLarge(f"the file is larger than max_upload_bytes={limit}")
        workspace = self.workspace(session)
        room = await self._room(session, workspace)
        if room is not None and length is not None and length > room:
            self.quota_hit()
            raise errors.WorkspaceFull("the file does not fit in the session's workspace")
        if path:
            await asyncio.to_thread(workspace.check_target, path)
        upload = await asyncio.to_thread(workspace.upload)
        # a filesystem quota refuses the write itself; without one the gateway counts
        return PendingUpload(upload, limit, None if self._quota_enforced(workspace) else room)

    async def write(self, pending: PendingUpload, data: bytes) -> None:
        """Take the next bytes of an upload. They are written a WRITE_BATCH at a time in a
        thread, while the next batch arrives (at most two batches held). Raises
        PayloadTooLarge, WorkspaceFull (the upload is aborted then)."""
        pending.batch.append(data)
        pending.batched += len(data)
        if pending.batched >= WRITE_BATCH:
            await self._settle(pending)  # the previous batch is written (or failed)
            self._flush(pending)

    def _flush(self, pending: PendingUpload) -> None:
        data = b"".join(pending.batch)
        pending.batch.clear()
        pending.batched = 0
        pending.start(pending.write, data)
        self._metrics.file_bytes.labels("up").inc(len(data))

    async def _settle(self, pending: PendingUpload) -> Any:
        try:
            return await pending.settle()
        except errors.WorkspaceFull:
            self.quota_hit()
            raise

    async def drain(self, pending: PendingUpload) -> None:
        """Write what an upload still holds (its last bytes came)."""
        await self._settle(pending)
        if pending.batched:
            self._flush(pending)
            await self._settle(pending)

    async def commit(self, session: Session, pending: PendingUpload, path: str
                     ) -> tuple[FileInfo, bool]:
        """Put the uploaded file at ``path``; (its info, whether it is new)."""
        await self.drain(pending)
        pending.start(pending.upload.commit, path)
        info, created = await pending.settle()
        self._changed(session, info, "written")
        await self._measure(session)
        return info, created

    async def put(self, session: Session, path: str, data: bytes) -> FileInfo:
        """A whole file at once (a one-shot run's inline files). Raises as an upload does."""
        pending = await self.begin_upload(session, path, len(data))
        try:
            await self.write(pending, data)
            info, _ = await self.commit(session, pending, path)
        except BaseException:
            pending.abort()
            raise
        return info

    async def delete(self, session: Session, path: str, *, recursive: bool) -> None:
        workspace = self.workspace(session)
        info = await asyncio.to_thread(workspace.delete, path, recursive=recursive)
        self._changed(session, info, "deleted")
        await self._measure(session)

    def quota_hit(self, source: str = "upload") -> None:
        self._metrics.quota_hits.labels(source).inc()

    # ------------------------------------------------------------------ cells
    async def before_cell(self, session: Session) -> int:
        """The moment a cell starts, for ``after_cell``: on the coarse clock (files written
        later never carry an earlier timestamp, whether the filesystem stamps coarse or fine
        times), and past the last change made through the API or reported for a cell, so
        neither the API's own files nor the previous cell's are reported as this cell's (a
        file written in the tick the next cell starts in would be: a cell takes ~2 ms, a tick
        4). Right after an upload, or a cell that wrote files, this waits up to one tick."""
        since = now_ns()
        while since <= session.files_changed_ns:
            await asyncio.sleep(0.001)
            since = now_ns()
        return since

    async def after_cell(self, session: Session, since_ns: int, error: ErrorInfo | None
                         ) -> tuple[list[FileInfo], bool]:
        """The files a cell that started at ``since_ns`` created or modified (the first
        CHANGED_LIMIT by path) and whether there were more; never raises."""
        if error is not None and error.evalue.startswith(("[Errno 28]", "[Errno 122]")):
            self.quota_hit("cell")
        if not session.workspace:
            return [], False
        hints = self._volumes.changes(session.workspace)
        if hints is not None:  # installed packages are not the cell's files (GET .../packages)
            hints = {h for h in hints if not _in_packages(h)}
        if hints is not None and not hints:
            return [], False  # nothing was written in the workspace: no need to look
        workspace = Workspace(session.workspace, self._owner)
        most = self._settings.files_scan_max_entries
        try:
            if hints is None:  # cannot tell what changed: walk everything
                scan = await asyncio.to_thread(workspace.scan, since_ns, limit=CHANGED_LIMIT,
                                               max_entries=most)
            else:
                scan = await asyncio.to_thread(workspace.scan_paths, hints, since_ns,
                                               limit=CHANGED_LIMIT, max_entries=most)
        except (errors.GatewayError, OSError) as exc:
            log.warning("could not scan the workspace session_id=%s: %s", session.id, exc)
            return [], False
        if hints is None:
            self._metrics.workspace_bytes.labels(session.owner, session.id).set(scan.used_bytes)
        else:
            await self._measure(session)
        changed = [info for info in scan.changed if not _in_packages(info.path)]
        for info in changed:
            self._changed(session, info, "written")
        return changed, scan.truncated

    # ------------------------------------------------------------------ helpers
    def _changed(self, session: Session, info: FileInfo, change: str) -> None:
        session.files_changed_ns = time.time_ns()  # the fine clock: at or past its timestamps
        session.events.publish({"type": "file_changed", "change": change,
                                "file": info.model_dump(mode="json")})

    def _quota_enforced(self, workspace: Workspace) -> bool:
        return self._volumes.capacity(workspace.root) is not None

    async def room_for(self, session: Session) -> int | None:
        """Free bytes in the session's workspace under its quota, or None without a bound."""
        return await self._room(session, self.workspace(session))

    async def _room(self, session: Session, workspace: Workspace) -> int | None:
        """Free bytes in the workspace under its quota, or None when it has no bound."""
        capacity = await asyncio.to_thread(self._volumes.capacity, workspace.root)
        if capacity is not None:
            used, total = capacity
            return total - used
        if not session.limits.disk_mb:
            return None
        scan = await asyncio.to_thread(workspace.scan, time.time_ns() + 10**18, limit=0,
                                       max_entries=self._settings.files_scan_max_entries)
        return max(0, session.limits.disk_mb * 1024 * 1024 - scan.used_bytes)

    async def _measure(self, session: Session) -> None:
        if session.workspace:
            capacity = await asyncio.to_thread(self._volumes.capacity, session.workspace)
            if capacity is not None:
                self._metrics.workspace_bytes.labels(session.owner, session.id).set(capacity[0])


def _in_packages(path: str) -> bool:
    """Under ``.packages`` (the session's installed packages, see gateway/packages/)."""
    return path == ".packages" or path.startswith(".packages/")
