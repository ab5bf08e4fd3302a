"""Handoff: sessions passing between gateway processes — restored at start-up, taken over
from a crashed replica, lost to another replica, and handed over at a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from gateway import errors
from gateway.launchers import Launcher
from gateway.models import SessionState
from gateway.registry import SessionRecord
from gateway.sessions.leases import Leases
from gateway.sessions.records import Records
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings
from gateway.volumes import Volumes

log = logging.getLogger(__name__)

SessionFromRecord = Callable[[SessionRecord], Session]
Wake = Callable[[SessionRecord], Awaitable[Session]]


class Handoff:
    def __init__(self, settings: Settings, launcher: Launcher, table: SessionTable,
                 leases: Leases, records: Records, session_from: SessionFromRecord,
                 volumes: Volumes, wake: Wake) -> None:
        self._settings = settings
        self._volumes = volumes
        self._launcher = launcher
        self._table = table
        self._leases = leases
        self._records = records
        self._session_from = session_from
        self._wake = wake  # restores a session from its snapshot (Hibernation.restore)

    async def restore(self) -> None:
        """Bring back this gateway's sessions after a restart, concurrently: kernels still
        running come back with their variables; a session whose kernel vanished or does not
        answer (whatever it planted in its socket directory) comes back ``dead`` and the next
        call starts a fresh interpreter. The launcher removes kernels no record claims."""
        registry = self._records.registry
        records = await registry.list()
        mine = [r for r in records if r.gateway_id == self._settings.instance_id
                and r.state != SessionState.hibernated]  # those wait for their next call
        granted = await self._leases.claim([(r.owner, r.session_id) for r in mine])
        restoring = [self._session_from(r) for r, ok in zip(mine, granted, strict=True) if ok]
        for session in restoring:  # registered at once: the renewer keeps their leases
            self._table.add(session)
        handles = [r.handle for r in records if r.handle is not None]
        alive = {h.ref for h in await self._launcher.adopt(handles)}
        # workspaces of sessions that ended while no gateway ran, and of pooled kernels
        kept = {r.workspace for r in records if r.workspace} | {
            h.workspace for h in handles if h.workspace}
        if removed := await self._volumes.collect(kept):
            log.info("removed workspaces no session uses count=%d", removed)
        await asyncio.gather(*(self._bring_back(s, alive) for s in restoring))

    async def _bring_back(self, session: Session, alive: set[str]) -> None:
        handle = session.slot.handle
        try:
            back = handle is not None and handle.ref in alive and \
                await session.slot.reconnect(handle)
        except Exception:  # one session's kernel must never stop the others (or the gateway)
            log.exception("re-adoption failed session_id=%s", session.id)
            back = False
        if back:
            session.watchers.kernel_started()
            session.set_state(SessionState.idle)
        else:
            session.slot.mark_vanished()
            session.set_state(SessionState.dead)
        session.ready.set_result(None)
        await self._records.save_quietly(session)
        log.info("session restored session_id=%s state=%s", session.id, session.state.value)

    async def take_over(self, record: SessionRecord) -> Session:
        """Serve a session whose replica stopped renewing its lease (held here now): with its
        kernel if this host reaches it, else ``dead``; from its snapshot if it has one (it
        was hibernated). On failure the lease is given up."""
        known = self._table.get((record.owner, record.session_id))
        if known is not None:
            await asyncio.shield(known.ready)
            return known
        if record.snapshot is not None:
            return await self._wake(record)
        session = self._session_from(record)
        async with self._released_on_failure(session):
            async with self._table.reserve(session, check=False):
                await self._records.save(session)  # names this gateway before it acts
                handle = record.handle
                if handle is not None and await self._launcher.attach(handle) \
                        and await session.slot.reconnect(handle):
                    session.watchers.kernel_started()
                    session.set_state(SessionState.idle)
                else:  # out of reach (another host): its own gateway removes it
                    session.slot.mark_vanished()
                    session.set_state(SessionState.dead)
        await self._records.save(session)
        log.info("session taken over session_id=%s from gateway=%s state=%s", session.id,
                 record.gateway_id, session.state.value)
        return session

    @contextlib.asynccontextmanager
    async def _released_on_failure(self, session: Session) -> AsyncIterator[None]:
        """A failed takeover gives the lease up, so another call (or replica) can try again;
        anything but a GatewayError becomes KernelStartFailed (logged once, here)."""
        try:
            yield
        except BaseException as exc:
            await self._leases.release(session.key)
            if isinstance(exc, Exception) and not isinstance(exc, errors.GatewayError):
                log.error("takeover failed session_id=%s", session.id, exc_info=exc)
                raise errors.KernelStartFailed(
                    f"could not take session {session.id!r} over: {type(exc).__name__}"
                ) from exc
            raise

    async def lose(self, session: Session) -> None:
        """Another replica took ``session`` over: stop serving it, and stop its kernel unless
        the other replica adopted it. Its sockets close with 4503 (reconnect)."""
        log.warning("lost the lease of session_id=%s to another gateway", session.id)
        self._table.remove(session)
        if await self._adopted_elsewhere(session):
            session.slot.let_go()  # theirs now
        else:
            await session.slot.stop(grace_s=self._settings.shutdown_grace_s)
        session.events.publish({"type": "moved"})
        session.set_state(SessionState.closed)

    async def _adopted_elsewhere(self, session: Session) -> bool:
        """Whether the replica that took ``session`` over uses its kernel. A takeover names
        itself in the record before it touches the kernel: a record still naming this
        replica is read again one renewal later before the kernel counts as nobody's."""
        ours = session.slot.handle.ref if session.slot.handle is not None else None
        for attempt in range(2):
            try:
                record = await self._records.registry.get(session.owner, session.id)
            except errors.GatewayError:
                return True  # cannot tell: never stop a kernel another replica may use
            if record is None:
                return False
            if record.gateway_id != self._settings.instance_id:
                return record.handle is not None and record.handle.ref == ours
            if attempt == 0:
                await asyncio.sleep(self._settings.lease_renew_s)
        return False

    async def hand_over_all(self) -> int:
        """At a graceful stop with kept kernels: leave every kernel running, write the
        records and give the leases up, so the next process (or another replica, at its
        next call) serves them at once. Returns how many."""
        sessions = self._table.clear()
        for session in sessions:
            session.slot.let_go()
            await self._records.save_quietly(session)
            await self._leases.release(session.key)
        return len(sessions)

