"""Hibernation: a session's kernel and sandbox stopped, its workspace and variables kept in
the snapshot store, and the session brought back on its next call (any kind of call: every
one locates the session, and locating a hibernated record restores it, on any replica).

A hibernated session is only its registry record (state ``hibernated``, no handle, the
snapshot's key and SHA-256): no Session object, no kernel, no workspace. The record is the
snapshot's anchor of trust: a store file whose digest differs is never unpacked and never
reaches a kernel; the session restarts fresh and says ``restore_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway import errors
from gateway.errors import KernelDied
from gateway.launchers import Launcher
from gateway.metrics import Metrics
from gateway.models import HibernateResult, RestoreReport, SessionState, SkippedVariable
from gateway.registry import SessionRecord
from gateway.sessions.kernel_slot import Kernels
from gateway.sessions.leases import Leases
from gateway.sessions.lifecycle import Lifecycle
from gateway.sessions.records import Records
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings
from gateway.snapshots import SnapshotRef, SnapshotStore, archive, make_store, namespace, new_key

log = logging.getLogger(__name__)

MIB = 1024 * 1024
TAR_SLACK = 1 * MIB  # tar headers and padding on top of the files and the namespace


def now() -> datetime:
    return datetime.now(UTC)


class Hibernation:
    def __init__(self, settings: Settings, launcher: Launcher, metrics: Metrics,
                 table: SessionTable, leases: Leases, records: Records, lifecycle: Lifecycle,
                 kernels: Kernels) -> None:
        self._settings = settings
        self._launcher = launcher
        self._metrics = metrics
        self._table = table
        self._leases = leases
        self._records = records
        self._lifecycle = lifecycle
        self._kernels = kernels
        self.store: SnapshotStore = make_store(settings)
        self._tmp = settings.work_dir / "snapshots-tmp"

    # ------------------------------------------------------------------ hibernate
    async def hibernate(self, session: Session) -> HibernateResult:
        """Snapshot ``session`` and stop its kernel, in its FIFO turn (after the running
        cell). Raises SnapshotTooLarge (a workspace over the cap: the session is left as it
        was), SessionNotFound; SnapshotStoreUnavailable, RegistryUnavailable, and
        SnapshotTooLarge for a kernel that wrote past its budget leave the session ``dead``
        (its kernel is gone, its workspace kept)."""
        async with session.queue.turn():
            if session.closed:
                raise errors.SessionNotFound(f"session {session.id!r} was deleted")
            if session.state == SessionState.hibernated:  # by a call that went first
                return HibernateResult(
                    session_id=session.id, state=session.state, generation=session.generation,
                    snapshot_bytes=session.snapshot.bytes if session.snapshot else 0,
                    variables=[], skipped=[], files=0, packages=0)
            try:
                result = await self._hibernate(session)
            except errors.GatewayError:
                self._metrics.hibernations.labels("error").inc()
                raise
        self._metrics.hibernations.labels("ok").inc()
        return result

    async def _hibernate(self, session: Session) -> HibernateResult:
        max_bytes = self._settings.snapshot_max_mb * MIB
        workspace = session.workspace
        used = await asyncio.to_thread(archive.workspace_bytes, workspace) if workspace else 0
        if used + TAR_SLACK > max_bytes:
            raise errors.SnapshotTooLarge(
                f"the workspace holds {used // MIB} MiB, over snapshot_max_mb "
                f"({self._settings.snapshot_max_mb} MiB): the session cannot be hibernated")
        saved = await self._save_namespace(session, max_bytes - used - TAR_SLACK)
        await session.slot.stop(grace_s=self._settings.shutdown_grace_s)
        try:
            ref, packed = await self._store_workspace(session, max_bytes)
            session.snapshot = ref
            record = session.record(self._settings.instance_id, self._settings.advertised_url)
            await self._records.registry.put(record.model_copy(update={
                "state": SessionState.hibernated, "handle": None, "workspace": None}))
        except errors.GatewayError:
            if session.snapshot is not None:
                with contextlib.suppress(errors.GatewayError):
                    await self.store.delete(session.snapshot.key)
                session.snapshot = None
            session.slot.mark_vanished()
            session.set_state(SessionState.dead)  # the next call starts a kernel, files kept
            raise
        # the lease first: a call that finds the session here meanwhile waits for this turn,
        # then locates it again (SessionHibernated) and restores it under a lease of its own
        await self._leases.release(session.key)
        self._table.remove(session)
        session.slot.handle = None
        session.set_state(SessionState.hibernated)  # its sockets close: reconnecting restores
        self._metrics.sessions.set(len(self._table))
        if workspace:
            await self._kernels.volumes.remove(workspace)
            self._metrics.forget_workspace(session.owner, session.id)
        if not self._lifecycle.closing:
            self._kernels.pool.refill()
        log.info("session hibernated session_id=%s bytes=%d variables=%d skipped=%d",
                 session.id, ref.bytes, len(saved.variables), len(saved.skipped))
        return HibernateResult(session_id=session.id, state=SessionState.hibernated,
                               generation=session.generation, snapshot_bytes=ref.bytes,
                               variables=saved.variables, skipped=saved.skipped,
                               files=packed.files, packages=packed.packages)

    def _kernel_dir(self, session: Session) -> str:
        root = self._launcher.workspace_in_kernel or session.workspace or ""
        return f"{root.rstrip('/')}/{archive.SNAPSHOT_DIR}"

    async def _save_namespace(self, session: Session, budget: int) -> namespace.NamespaceReport:
        if not session.slot.live or not session.workspace:
            return namespace.NamespaceReport()  # a dead kernel's variables are gone already
        try:
            return await namespace.save(session.slot.connection(), self._kernel_dir(session),
                                        budget, self._settings.snapshot_timeout_s)
        except (namespace.NamespaceFailed, KernelDied) as exc:
            log.warning("namespace not saved session_id=%s: %s", session.id, exc)
            return namespace.NamespaceReport(skipped=[SkippedVariable(
                name="*", reason=f"the variables could not be saved: {exc}")])

    async def _store_workspace(self, session: Session, max_bytes: int
                               ) -> tuple[SnapshotRef, archive.Packed]:
        """Pack the (stopped) session's workspace and put it in the store."""
        tmp = await self._tmp_file()
        try:
            packed = await asyncio.to_thread(archive.pack, session.workspace, tmp, max_bytes)
            ref = SnapshotRef(key=new_key(session.owner, session.id),
                              sha256=await asyncio.to_thread(archive.sha256_of, tmp),
                              bytes=packed.bytes, created_at=now())
            await self.store.put(ref.key, tmp)
        except OSError as exc:
            raise errors.SnapshotStoreUnavailable(
                f"the snapshot could not be written: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return ref, packed

    async def _tmp_file(self) -> Path:
        await asyncio.to_thread(self._tmp.mkdir, mode=0o700, parents=True, exist_ok=True)
        return self._tmp / f"{secrets.token_hex(12)}.tar"

    # ------------------------------------------------------------------ restore
    async def restore(self, record: SessionRecord) -> Session:
        """Serve a record that has a snapshot (its lease held here now): a kernel (pooled
        when it can be), the workspace unpacked, the namespace loaded. Raises capacity
        errors, KernelStartFailed, SnapshotStoreUnavailable (the record stays as it was)."""
        known = self._table.get((record.owner, record.session_id))
        if known is not None:
            await asyncio.shield(known.ready)
            return known
        session = self._lifecycle.session_from(record)
        tmp = await self._tmp_file()
        try:
            async with self._table.reserve(session):
                failure = await self._fetch(record.snapshot, tmp)
                await self._records.save(session)  # names this gateway before it acts
                report = await self._bring_back(session, tmp, failure)
        except BaseException:
            with contextlib.suppress(errors.GatewayError):
                await self._records.registry.put(record)  # as it was, for a retry
            await self._leases.release(session.key)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        session.restored = report
        session.snapshot = None
        self._metrics.restores.labels(report.status).inc()
        await self._records.save(session)
        self._metrics.sessions.set(len(self._table))
        if record.snapshot is not None:
            with contextlib.suppress(errors.GatewayError):
                await self.store.delete(record.snapshot.key)
        log.info("session restored session_id=%s status=%s variables=%d files=%d",
                 session.id, report.status, len(report.variables), report.files)
        return session

    async def _fetch(self, ref: SnapshotRef | None, tmp: Path) -> str | None:
        """Copy the snapshot to ``tmp`` and check it against the record; None when it is
        intact, else why not. Raises SnapshotStoreUnavailable."""
        if ref is None:
            return "the session has no snapshot"
        if not await self.store.get(ref.key, tmp, ref.bytes):
            return "the snapshot is missing from the store, or was changed there"
        digest = await asyncio.to_thread(archive.sha256_of, tmp)
        if not hmac.compare_digest(digest, ref.sha256):
            return "the snapshot failed its integrity check (it was changed in the store)"
        return None

    async def _bring_back(self, session: Session, tmp: Path, failure: str | None
                          ) -> RestoreReport:
        await self._lifecycle.start_kernel(session)  # generation + 1, a fresh workspace
        if failure is None and session.workspace:
            try:
                files, packages = await asyncio.to_thread(
                    archive.unpack, tmp, session.workspace, self._kernels.volumes.owner)
            except (tarfile.TarError, OSError) as exc:
                failure = f"the snapshot could not be unpacked: {type(exc).__name__}"
        if failure is not None:
            log.warning("restore failed session_id=%s: %s", session.id, failure)
            return RestoreReport(status="restore_failed", error=failure)
        try:
            loaded = await namespace.load(session.slot.connection(), self._kernel_dir(session),
                                          self._settings.snapshot_timeout_s)
        except (namespace.NamespaceFailed, KernelDied) as exc:
            loaded = namespace.NamespaceReport(skipped=[SkippedVariable(
                name="*", reason=f"the variables could not be loaded: {exc}")])
        return RestoreReport(variables=loaded.variables, skipped=loaded.skipped, files=files,
                             packages=packages)

    # ------------------------------------------------------------------ hibernated records
    async def asleep(self, owner: str, session_id: str) -> SessionRecord | None:
        """The record of ``owner``'s session if it is hibernated now (no restore)."""
        if (owner, session_id) in self._table:
            return None
        record = await self._records.registry.get(owner, session_id)
        return record if record is not None and record.state == SessionState.hibernated \
            else None

    async def forget(self, owner: str, session_id: str) -> bool:
        """Delete a hibernated session, snapshot and record, without restoring it; False if
        it is not hibernated (or is being restored right now)."""
        key = (owner, session_id)
        if not (await self._leases.claim([key]))[0]:
            return False
        try:
            record = await self._records.registry.get(owner, session_id)
            if record is None or record.state != SessionState.hibernated:
                return False
            await self._records.registry.delete(owner, session_id)
            if record.snapshot is not None:
                with contextlib.suppress(errors.GatewayError):  # the retention sweep retries
                    await self.store.delete(record.snapshot.key)
            log.info("hibernated session deleted session_id=%s", session_id)
            return True
        finally:
            await self._leases.release(key)

    async def expire(self) -> int:
        """Delete hibernated sessions whose snapshot is older than snapshot_retention_s, and
        any stored snapshot that old (its record was lost); returns how many sessions."""
        retention = self._settings.snapshot_retention_s
        if not retention:
            return 0
        cutoff = now() - timedelta(seconds=retention)
        expired = 0
        for record in await self._records.registry.list():
            if record.state == SessionState.hibernated and record.snapshot is not None \
                    and record.snapshot.created_at < cutoff:
                expired += await self.forget(record.owner, record.session_id)
        for key in await self.store.older_than(cutoff):
            await self.store.delete(key)
        return expired

    async def hibernate_all(self) -> int:
        """At a graceful stop (hibernate_on_shutdown): hibernate every started session,
        each within snapshot_timeout_s; returns how many were."""
        sessions = [s for s in self._table if s.ready.done() and not s.closed]

        async def one(session: Session) -> bool:
            try:
                await asyncio.wait_for(self.hibernate(session),
                                       self._settings.snapshot_timeout_s)
                return True
            except (errors.GatewayError, TimeoutError) as exc:
                log.warning("not hibernated at shutdown session_id=%s: %s", session.id, exc)
                return False

        return sum(await asyncio.gather(*(one(s) for s in sessions)))
