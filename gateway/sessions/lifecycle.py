"""Lifecycle: sessions' births, kernel replacements and ends on this replica.

Makes Session objects (fresh, or from a record another process wrote), opens a session under
the caller's lease with its capacity reserved, replaces a session's kernel (a requested
restart, a dead kernel, a timeout the kernel ignored) and discards a session.
"""

from __future__ import annotations

import logging

from gateway import errors, policy
from gateway.events import EventLog
from gateway.jupyter_watchers import KernelWatchers
from gateway.launchers import Launcher, LaunchSpec
from gateway.metrics import Metrics
from gateway.models import Limits, SessionState
from gateway.registry import Registry, SessionRecord
from gateway.sessions.kernel_slot import Kernels, KernelSlot
from gateway.sessions.leases import Leases
from gateway.sessions.records import Records
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, settings: Settings, launcher: Launcher, registry: Registry,
                 metrics: Metrics, kernels: Kernels, table: SessionTable, leases: Leases,
                 records: Records) -> None:
        self._settings = settings
        self._launcher = launcher
        self._registry = registry
        self._metrics = metrics
        self._kernels = kernels
        self._table = table
        self._leases = leases
        self._records = records
        self.closing = False  # the gateway is stopping: no new session, cell or restart
        keep = settings.keep_kernels_on_shutdown
        self.keep_kernels = keep if keep is not None else (
            registry.shared and launcher.kernels_outlive_gateway)

    def handing_off(self) -> bool:
        """Whether the gateway is stopping and leaves its kernels to the next process."""
        return self.closing and self.keep_kernels

    def new_session(self, owner: str, session_id: str, limits: Limits,
                    env: dict[str, str]) -> Session:
        events = EventLog(self._settings.ws_replay_events, self._settings.ws_replay_bytes)
        watchers = KernelWatchers(self._settings.jupyter_buffer_messages)
        slot = KernelSlot(self._kernels, watchers.tap)
        session = Session(owner, session_id, limits, env, events, watchers, slot)
        slot.on_exit = session.kernel_exited
        return session

    def session_from(self, record: SessionRecord) -> Session:
        """A Session (not yet connected) for a record another gateway process wrote."""
        session = self.new_session(record.owner, record.session_id, record.limits, {})
        session.restore_from(record)
        self._leases.assume(session.key)
        return session

    async def open(self, owner: str, session_id: str, limits: Limits | None,
                   env: dict[str, str] | None, *, strict_env: bool = True) -> Session:
        """Start a new session; the caller holds its lease (given up here on failure).
        Raises capacity errors, 400s for limits and env, KernelStartFailed, ShuttingDown."""
        try:
            if self.closing:
                raise errors.ShuttingDown("the gateway is shutting down")
            session = self.new_session(owner, session_id,
                                       policy.resolve_limits(self._settings, limits),
                                       policy.resolve_env(self._settings, env, strict=strict_env))
            async with self._table.reserve(session):
                await self.start_kernel(session)
        except BaseException:
            await self._leases.release((owner, session_id))
            raise
        self._metrics.sessions.set(len(self._table))
        await self._records.save(session)
        return session

    async def start_kernel(self, session: Session) -> None:
        """A fresh interpreter for ``session`` (pooled when its profile is the default), in
        the session's workspace (the first kernel's becomes the session's)."""
        spec = LaunchSpec(session_id=session.id, kernel_id=session.kernel_id,
                          owner=session.owner, limits=session.limits, env=session.env,
                          workspace=session.workspace or "")
        pooled = not session.env and session.limits == self._settings.default_limits
        await session.slot.start(spec, pooled=pooled)
        handle = session.slot.handle
        if session.closed:  # deleted while its kernel started: this kernel is nobody's
            await session.slot.stop(grace_s=0)
            if handle is not None and handle.workspace and handle.workspace != session.workspace:
                await self._kernels.volumes.remove(handle.workspace)
            raise errors.SessionNotFound(f"session {session.id!r} was deleted")
        if handle is not None:
            session.workspace = handle.workspace
        session.execution_count = 0
        session.watchers.kernel_started()
        session.set_state(SessionState.idle)

    async def replace_kernel(self, session: Session, announce: str) -> None:
        """A fresh interpreter for ``session``; Jupyter clients see ``announce`` (``starting``
        for a requested restart, ``restarting`` when the gateway had to replace a kernel)."""
        if self.closing:  # a kept kernel is the next gateway process's to restart
            raise errors.ShuttingDown("the gateway is shutting down; retry the call")
        session.set_state(SessionState.restarting)
        await session.slot.stop(grace_s=self._settings.shutdown_grace_s)
        session.watchers.announce(announce)  # after the old kernel's last words
        try:
            await self.start_kernel(session)
        except errors.GatewayError:
            if session.closed:  # deleted meanwhile (its workspace too)
                raise errors.SessionNotFound(f"session {session.id!r} was deleted") from None
            session.set_state(SessionState.dead)
            session.watchers.announce("dead")
            raise
        await self._records.save(session)

    async def discard(self, session: Session, *, remove_files: bool) -> None:
        """End ``session``: its sockets close (4410), its record goes, its kernel stops."""
        self._table.remove(session)
        session.set_state(SessionState.closed)
        self._metrics.sessions.set(len(self._table))
        try:  # the record first, lease still held: no replica (nor our reaper) takes it over
            await self._registry.delete(session.owner, session.id)
        finally:
            await session.slot.stop(grace_s=self._settings.shutdown_grace_s)
            if remove_files and session.workspace:
                await self._kernels.volumes.remove(session.workspace)
                self._metrics.forget_workspace(session.owner, session.id)
        await self._leases.release(session.key)
        self._kernels.pool.refill()
        log.info("session closed session_id=%s", session.id)
