"""SessionManager: the façade the handlers call, and the wiring of the session layer.

Handlers ``locate`` a session (served ``Here``, or ``There`` at another replica), then call one
verb on it. Every cell, from whichever front door, goes the same way (httpx's onion of send
layers): placement → the session's FIFO turn → the cell run → the timeout ladder. Every public
method raises only GatewayError subclasses.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import zmq.asyncio

from gateway import errors, policy
from gateway.events import EventLog
from gateway.jupyter_watchers import KernelWatchers
from gateway.kernel import KernelConnection, Message, Route
from gateway.launchers import Launcher, LaunchSpec
from gateway.metrics import Metrics
from gateway.models import (
    CreateSession,
    ExecuteRequest,
    ExecuteResult,
    Limits,
    SessionInfo,
    SessionState,
)
from gateway.pool import KernelPool
from gateway.registry import Registry, SessionRecord
from gateway.sessions.cell import Cell, CellRunner
from gateway.sessions.handoff import Handoff
from gateway.sessions.kernel_slot import Kernels, KernelSlot
from gateway.sessions.leases import Leases
from gateway.sessions.placement import Here, Placement, There, Vacant
from gateway.sessions.reaper import Reaper
from gateway.sessions.records import Records
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class SessionManager:
    def __init__(self, settings: Settings, launcher: Launcher, registry: Registry,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.launcher = launcher
        self.registry = registry
        self.metrics = metrics
        self.table = SessionTable(settings)
        self._zmq = zmq.asyncio.Context()
        self.pool = KernelPool(settings, launcher, self._zmq, metrics,
                               room=lambda: settings.max_sessions - len(self.table))
        self._kernels = Kernels(settings, launcher, self.pool, self._zmq, metrics)
        self._records = Records(settings, registry)
        self._leases = Leases(registry, settings.instance_id, settings.lease_ttl_s)
        self._handoff = Handoff(settings, launcher, self.table, self._leases, self._records,
                                self._session_from)
        self._placement = Placement(settings, registry, self.table, self._leases,
                                    self._handoff)
        self._cells = CellRunner(settings, metrics, self._replace_kernel, self._handing_off)
        self._reaper = Reaper(settings)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        keep = settings.keep_kernels_on_shutdown
        self.keep_kernels = keep if keep is not None else (
            registry.shared and launcher.kernels_outlive_gateway)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Restore this gateway's sessions and start the background loops. A launcher that is
        not ready yet (no engine, no image) is logged, not fatal: /readyz reports it."""
        if self._leases.shared:  # first: restoring many kernels may take longer than a lease
            self._spawn(self._renew_forever())
        try:
            await self.launcher.check()
            await self._handoff.restore()
        except errors.LauncherUnavailable as exc:
            log.error("launcher not ready: %s", exc.message)
        self.metrics.sessions.set(len(self.table))
        self._spawn(self._reaper.run_forever(self.reap_once))
        self.pool.refill()

    async def close(self) -> None:
        """Stop the loops and, unless they are kept for the next process, every kernel."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await self.pool.close()
        if self.keep_kernels:
            # calls still running get ShuttingDown (their cells run on); none restarts a kernel
            kept = await self._handoff.hand_over_all()
            log.info("left %d session kernels running for the next gateway process", kept)
        else:
            await asyncio.gather(*(self._discard(s, remove_files=False) for s in self.table),
                                 return_exceptions=True)
        await self.launcher.close()
        await self.registry.close()
        self._zmq.term()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _handing_off(self) -> bool:
        return self._closing and self.keep_kernels

    # ------------------------------------------------------------------ placement
    async def locate(self, owner: str, session_id: str, *, open_if_absent: bool = False,
                     deadline: float | None = None) -> Here | There:
        """Where the session is served; with ``open_if_absent`` (and ``create_on_execute``)
        an unknown session is opened here. Raises SessionNotFound, OwnerUnreachable, ..."""
        create = open_if_absent and self.settings.create_on_execute
        where = await self._placement.locate(owner, session_id, create=create, deadline=deadline)
        if isinstance(where, Vacant):
            known = self.table.get((owner, session_id))  # a concurrent call opened it
            if known is not None:
                await asyncio.shield(known.ready)
                return Here(known)
            return Here(await self._open(owner, session_id, None, None))
        return where

    def mark_down(self, url: str) -> None:
        self._placement.mark_down(url)

    async def session_of_kernel(self, owner: str, kernel_id: str) -> str:
        return await self._placement.session_of_kernel(owner, kernel_id)

    # ------------------------------------------------------------------ create / read / delete
    def count(self) -> int:
        return len(self.table)

    async def create(self, owner: str, req: CreateSession) -> SessionInfo:
        """Create a session and start its kernel. Raises SessionExists, capacity errors."""
        session_id = req.session_id or uuid.uuid4().hex
        exists = errors.SessionExists(f"session {session_id!r} already exists")
        key = (owner, session_id)
        if key in self.table or await self.registry.get(owner, session_id):
            raise exists
        if not (await self._leases.claim([key]))[0] or key in self.table:
            raise exists  # another replica or a concurrent call is creating it right now
        return (await self._open(owner, session_id, req.limits, req.env)).info()

    async def create_kernel(self, owner: str, env: dict[str, str] | None) -> Session:
        """A new session for a Jupyter client (env keys outside the allowlist are dropped)."""
        session_id = uuid.uuid4().hex
        await self._leases.claim([(owner, session_id)])
        return await self._open(owner, session_id, None,
                                policy.resolve_env(self.settings, env, strict=False))

    async def list(self, owner: str) -> builtins.list[SessionInfo]:
        """This key's sessions, here and (with a shared registry) on other replicas."""
        here = [s.info() for s in self.table.per_key(owner)]
        return here + [r.info() for r in await self.served_elsewhere(owner)]

    def sessions_of(self, owner: str) -> builtins.list[Session]:
        return [s for s in self.table.per_key(owner) if s.ready.done()]

    async def served_elsewhere(self, owner: str) -> builtins.list[SessionRecord]:
        return await self._placement.served_elsewhere(owner)

    async def delete(self, session: Session) -> None:
        if not session.ready.done():
            await asyncio.wait({session.ready})
        await self._discard(session, remove_files=True)

    def _session_from(self, record: SessionRecord) -> Session:
        """A Session (not yet connected) for a record another gateway process wrote."""
        session = self._new_session(record.owner, record.session_id, record.limits, {})
        session.restore_from(record)
        self._leases.assume(session.key)
        return session

    def _new_session(self, owner: str, session_id: str, limits: Limits,
                     env: dict[str, str]) -> Session:
        events = EventLog(self.settings.ws_replay_events, self.settings.ws_replay_bytes)
        watchers = KernelWatchers(self.settings.jupyter_buffer_messages)
        slot = KernelSlot(self._kernels, watchers.tap)
        session = Session(owner, session_id, limits, env, events, watchers, slot)
        slot.on_exit = session.kernel_exited
        return session

    async def _open(self, owner: str, session_id: str, limits: Limits | None,
                    env: dict[str, str] | None) -> Session:
        """Start a new session; the caller holds its lease (given up here on failure)."""
        try:
            if self._closing:
                raise errors.ShuttingDown("the gateway is shutting down")
            session = self._new_session(owner, session_id,
                                        policy.resolve_limits(self.settings, limits),
                                        policy.resolve_env(self.settings, env))
            async with self.table.reserve(session):
                await self._start_kernel(session)
        except BaseException:
            await self._leases.release((owner, session_id))
            raise
        self.metrics.sessions.set(len(self.table))
        await self._records.save(session)
        return session

    async def _discard(self, session: Session, *, remove_files: bool) -> None:
        self.table.remove(session)
        session.set_state(SessionState.closed)
        self.metrics.sessions.set(len(self.table))
        handle = session.slot.handle
        try:  # the record first, lease still held: no replica (nor our reaper) takes it over
            await self.registry.delete(session.owner, session.id)
        finally:
            await session.slot.stop(grace_s=self.settings.shutdown_grace_s)
            if remove_files and handle is not None:
                await self.launcher.remove_workspace(handle)
        await self._leases.release(session.key)
        self.pool.refill()
        log.info("session closed session_id=%s", session.id)

    # ------------------------------------------------------------------ kernels
    async def _start_kernel(self, session: Session) -> None:
        spec = LaunchSpec(session_id=session.id, kernel_id=session.kernel_id,
                          owner=session.owner, limits=session.limits, env=session.env)
        pooled = not session.env and session.limits == self.settings.default_limits
        await session.slot.start(spec, pooled=pooled)
        session.execution_count = 0
        session.watchers.kernel_started()
        session.set_state(SessionState.idle)

    async def _replace_kernel(self, session: Session, announce: str) -> None:
        """A fresh interpreter for ``session``; Jupyter clients see ``announce`` (``starting``
        for a requested restart, ``restarting`` when the gateway had to replace a kernel)."""
        if self._closing:  # a kept kernel is the next gateway process's to restart
            raise errors.ShuttingDown("the gateway is shutting down; retry the call")
        session.set_state(SessionState.restarting)
        session.watchers.announce(announce)
        await session.slot.stop(grace_s=self.settings.shutdown_grace_s)
        try:
            await self._start_kernel(session)
        except errors.GatewayError:
            session.set_state(SessionState.dead)
            session.watchers.announce("dead")
            raise
        await self._records.save(session)

    async def restart(self, session: Session) -> SessionInfo:
        """Fresh interpreter, same id; waits for a running cell's turn (FIFO)."""
        async with session.queue.turn():
            await self._replace_kernel(session, "starting")
            session.touch()
        return session.info()

    async def interrupt(self, session: Session) -> None:
        """Interrupt whatever cell runs, whoever sent it."""
        session.queue.note_interrupt()
        await session.slot.interrupt()

    async def live_connection(self, session: Session) -> KernelConnection:
        """The kernel connection for a Jupyter client's non-execute message, starting a fresh
        kernel if the last one died. Raises SessionNotFound once closed, SessionMoved."""
        self._check_served(session)
        if not await self._placement.holds(session):
            raise errors.SessionMoved(f"session {session.id!r} is served by another gateway now")
        if not session.slot.live:
            async with session.queue.turn():
                self._check_served(session)
                if not session.slot.live:
                    await self._replace_kernel(session, "restarting")
        return session.slot.connection()

    @staticmethod
    def _check_served(session: Session) -> None:
        if session.closed:
            raise errors.SessionNotFound(f"session {session.id!r} was deleted")

    # ------------------------------------------------------------------ cells
    def check_execute(self, req: ExecuteRequest) -> float:
        """Validate a cell before anything starts; returns its timeout. Raises 400s."""
        return policy.execute_timeout(self.settings, req)

    async def execute(self, session: Session, req: ExecuteRequest, *,
                      request_id: str | None = None, interactive: bool = False
                      ) -> ExecuteResult:
        """Run one cell in its FIFO turn; its timeout counts from its own start. Every event
        goes to the session's watchers tagged ``request_id``; ``interactive`` runs ask them
        for input() instead of failing it."""
        cell = Cell(request_id=request_id or f"rest-{secrets.token_hex(6)}", code=req.code,
                    timeout_s=self.check_execute(req), stdin=req.stdin, interactive=interactive)
        result = await self._run(session, cell, bounded=True)
        assert result is not None  # only Jupyter cells are ever aborted
        return result

    def spawn_execute(self, session: Session, req: ExecuteRequest, request_id: str
                      ) -> asyncio.Task[ExecuteResult]:
        """An interactive run that outlives the client that asked for it (detachable)."""
        return self._spawn(self.execute(session, req, request_id=request_id, interactive=True))

    def submit_jupyter(self, session: Session, msg: Message, reply_to: Route
                       ) -> asyncio.Task[ExecuteResult | None]:
        """A Jupyter client's execute_request, run in the session's FIFO like any cell (no
        gateway deadline: Jupyter semantics); its replies go to ``reply_to``."""
        cell = Cell(request_id=f"jupyter-{str(msg['header'].get('msg_id', ''))[:64]}",
                    message=msg, reply_to=reply_to)
        return self._spawn(self._run(session, cell, bounded=False))

    async def _run(self, session: Session, cell: Cell, *, bounded: bool) -> ExecuteResult | None:
        self._check_served(session)
        settings = self.settings
        turn = session.queue.turn(
            max_waiting=settings.max_queue_per_session if bounded else None,
            max_wait_s=settings.max_queue_wait_s if bounded else None)
        async with turn:
            if self._closing:  # no new cell starts now: the next gateway process serves it
                raise errors.ShuttingDown("the gateway is shutting down; retry the call")
            self._check_served(session)
            return await self._cells.run(session, cell)

    async def reply_input(self, session: Session, request_id: str, value: str) -> None:
        """Answer the pending input() of run ``request_id``. Raises BadRequest if none."""
        pending = session.pending_input.pop(request_id, None)
        if pending is None or not session.slot.live:
            raise errors.BadRequest(f"no input is pending for request {request_id!r}")
        session.slot.connection().reply_input(value, pending)

    # ------------------------------------------------------------------ background
    async def reap_once(self) -> int:
        """Remove idle and over-age sessions; returns how many. Each replica reaps what it
        serves, having first taken over orphaned sessions: every session is reaped once."""
        if self._leases.shared:
            for record in await self._placement.orphans():
                await self._adopt_orphan(record)
        doomed = self._reaper.doomed(list(self.table))
        for session, why in doomed:
            log.info("reaping session_id=%s why=%s", session.id, why)
            self.metrics.reaped.labels(why).inc()
            await self._discard(session, remove_files=True)
        await self._records.save_activity(list(self.table))
        return len(doomed)

    async def _adopt_orphan(self, record: SessionRecord) -> None:
        current = await self.registry.get(record.owner, record.session_id)
        if current is None:  # deleted meanwhile
            await self._leases.release((record.owner, record.session_id))
            return
        try:
            await self._handoff.take_over(current)
        except errors.GatewayError as exc:
            log.warning("orphan takeover failed session_id=%s: %s", record.session_id,
                        exc.message)
        self.metrics.sessions.set(len(self.table))

    async def _renew_forever(self) -> None:
        """Renew the leases of every session served here, in one registry call a round."""
        while True:
            await asyncio.sleep(self.settings.lease_renew_s)
            try:
                await self.renew_leases()
            except errors.RegistryUnavailable:
                log.warning("could not renew session leases: the registry is unreachable")
            except Exception:  # one failure must not stop renewing
                log.exception("lease renewal failed")

    async def renew_leases(self) -> None:
        sessions = list(self.table)
        lost = set(await self._leases.renew([s.key for s in sessions]))
        for session in sessions:
            current = self.table.get(session.key)
            if current is None:
                # closed meanwhile: do not leave a renewed lease behind its deleted record
                await self._leases.release(session.key)
            elif current is session and session.key in lost:
                await self._handoff.lose(session)
                self.metrics.sessions.set(len(self.table))

