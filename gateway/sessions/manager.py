"""SessionManager: the façade the handlers call, and the wiring of the session layer.

Handlers ``locate`` a session (served ``Here``, or ``There`` at another replica), then call
one verb on it: the session verbs here, the cell verbs on ``manager.cells``. Every cell, from
whichever front door, goes the same way (httpx's onion of send layers): placement → the
session's FIFO turn → the cell run → the timeout ladder. Every public method raises only
GatewayError subclasses.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid

import zmq.asyncio

from gateway import errors, policy
from gateway.capabilities import KernelLibraries
from gateway.launchers import Launcher
from gateway.metrics import Metrics
from gateway.models import CreateSession, SessionInfo
from gateway.packages import Packages
from gateway.pool import KernelPool
from gateway.registry import Registry, SessionRecord
from gateway.sessions.cells import Cells
from gateway.sessions.files import SessionFiles
from gateway.sessions.handoff import Handoff
from gateway.sessions.hibernation import Hibernation
from gateway.sessions.kernel_slot import Kernels
from gateway.sessions.leases import Leases
from gateway.sessions.lifecycle import Lifecycle
from gateway.sessions.oneshot import OneShots
from gateway.sessions.placement import Here, Placement, There, Vacant
from gateway.sessions.records import Records
from gateway.sessions.runs import Runs
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.sessions.upkeep import Upkeep
from gateway.settings import Settings
from gateway.volumes import Volumes

log = logging.getLogger(__name__)


class SessionManager:
    def __init__(self, settings: Settings, launcher: Launcher, registry: Registry,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.launcher = launcher
        self.registry = registry
        self.metrics = metrics
        self.table = SessionTable(settings)
        self._zmq = zmq.asyncio.Context()
        # ZeroMQ's default of 1023 sockets per context would cap the gateway at ~250 sessions
        # (4 per kernel); the process's fd limit (raised at start-up) is the real bound
        self._zmq.set(zmq.MAX_SOCKETS, self._zmq.get(zmq.SOCKET_LIMIT))
        self.volumes = Volumes(settings, launcher.workspace_owner, launcher.workspace_mode)
        self.pool = KernelPool(settings, launcher, self._zmq, metrics,
                               room=lambda: settings.max_sessions - self.table.occupied,
                               volumes=self.volumes)
        kernels = Kernels(settings, launcher, self.pool, self._zmq, metrics, self.volumes)
        records = Records(settings, registry)
        self._leases = Leases(registry, settings.instance_id, settings.lease_ttl_s)
        self._lifecycle = Lifecycle(settings, launcher, registry, metrics, kernels, self.table,
                                    self._leases, records)
        # hibernate, restore, and hibernated records (``manager.hibernation``)
        self.hibernation = Hibernation(settings, launcher, metrics, self.table, self._leases,
                                       records, self._lifecycle, kernels)
        self._handoff = Handoff(settings, launcher, self.table, self._leases, records,
                                self._lifecycle.session_from, self.volumes,
                                self.hibernation.restore)
        self._placement = Placement(settings, registry, self.table, self._leases,
                                    self._handoff)
        self._upkeep = Upkeep(settings, registry, metrics, self.table, self._leases,
                              self._placement, self._handoff, records, self._lifecycle,
                              self.hibernation)
        self.files = SessionFiles(settings, metrics, self.volumes, launcher.workspace_owner)
        self.packages = Packages(settings, launcher, metrics, self.files)  # pip install
        self.cells = Cells(settings, metrics, self._lifecycle, self._placement, self.files,
                           stdin_hook=self.packages.kernel_request)
        self.runs = Runs(settings, self.cells)  # background cells (execute, wait: false)
        self.oneshots = OneShots(settings, metrics, self._lifecycle, self.table, kernels,
                                 self.files, stdin_hook=self.packages.refuse_request)
        self._loops: list[asyncio.Task[None]] = []  # the reaper and the lease renewer
        self.libraries = KernelLibraries(launcher)  # for /healthz

    @property
    def keep_kernels(self) -> bool:
        """Whether shutdown leaves kernels running for the next process (shared registry
        and a launcher whose kernels outlive the gateway, unless settings say otherwise)."""
        return self._lifecycle.keep_kernels

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Restore this gateway's sessions and start the background loops. A launcher that is
        not ready yet (no engine, no image) is logged, not fatal: /readyz reports it."""
        if self._leases.shared:  # first: restoring many kernels may take longer than a lease
            self._loops.append(asyncio.create_task(self._upkeep.renew_forever()))
        try:
            await self.launcher.check()
            await self._handoff.restore()
        except errors.LauncherUnavailable as exc:
            log.error("launcher not ready: %s", exc.message)
        self.metrics.sessions.set(len(self.table))
        self._loops.append(asyncio.create_task(self._upkeep.reap_forever()))
        self.pool.refill()
        self.libraries.learn()

    async def close(self) -> None:
        """Stop the loops and, unless they are kept for the next process, every kernel."""
        self._lifecycle.closing = True
        for task in self._loops:
            task.cancel()
        if self.settings.hibernate_on_shutdown:
            hibernated = await self.hibernation.hibernate_all()
            log.info("hibernated %d sessions for their next call", hibernated)
        await self.oneshots.close()
        await self.packages.close()
        await self.libraries.close()
        await self.pool.close()
        if self.keep_kernels:
            # calls still running get ShuttingDown (their cells run on); none restarts a kernel
            kept = await self._handoff.hand_over_all()
            log.info("left %d session kernels running for the next gateway process", kept)
        else:
            # without a shared registry nothing can find these sessions again: files go too
            await asyncio.gather(
                *(self._lifecycle.discard(s, remove_files=not self.registry.shared)
                  for s in self.table),
                return_exceptions=True)
        await self.launcher.close()
        await self.hibernation.store.close()
        self.volumes.close()
        await self.registry.close()
        self._zmq.term()

    # ------------------------------------------------------------------ placement
    async def locate(self, owner: str, session_id: str, *, open_if_absent: bool = False,
                     deadline: float | None = None, remembered: bool = False) -> Here | There:
        """Where the session is served; with ``open_if_absent`` (and ``create_on_execute``)
        an unknown session is opened here. Raises InvalidSessionId, SessionNotFound,
        OwnerUnreachable, RegistryUnavailable, and what opening a session raises."""
        create = open_if_absent and self.settings.create_on_execute
        where = await self._placement.locate(owner, session_id, create=create, deadline=deadline,
                                             remembered=remembered)
        if isinstance(where, Vacant):
            known = self.table.get((owner, session_id))  # a concurrent call opened it
            if known is not None:
                await asyncio.shield(known.ready)
                return Here(known)
            return Here(await self._lifecycle.open(owner, session_id, None, None))
        return where

    def remembered_place(self, owner: str, session_id: str) -> str | None:
        """Where another replica is remembered to serve the session (see Placement)."""
        return self._placement.remembered(owner, session_id)

    def mark_down(self, url: str) -> None:
        """The replica at ``url`` refused a forwarded call (see Placement.mark_down)."""
        self._placement.mark_down(url)

    def forget_location(self, owner: str, session_id: str) -> None:
        """The replica a call was forwarded to does not serve the session (any more)."""
        self._placement.forget(owner, session_id)

    async def session_of_kernel(self, owner: str, kernel_id: str) -> str:
        return await self._placement.session_of_kernel(owner, kernel_id)

    # ------------------------------------------------------------------ sessions
    def count(self) -> int:
        return len(self.table)

    async def create(self, owner: str, req: CreateSession) -> SessionInfo:
        """Create a session and start its kernel. Raises SessionExists, capacity errors."""
        session_id = req.session_id or uuid.uuid4().hex
        exists = errors.SessionExists(f"session {session_id!r} already exists")
        key = (owner, policy.check_session_id(session_id))
        if key in self.table or await self.registry.get(owner, session_id):
            raise exists
        if not (await self._leases.claim([key]))[0] or key in self.table:
            raise exists  # another replica or a concurrent call is creating it right now
        return (await self._lifecycle.open(owner, session_id, req.limits, req.env)).info()

    async def create_kernel(self, owner: str, env: dict[str, str] | None) -> Session:
        """A new session for a Jupyter client (env keys outside the allowlist are dropped)."""
        session_id = uuid.uuid4().hex
        await self._leases.claim([(owner, session_id)])
        return await self._lifecycle.open(owner, session_id, None, env, strict_env=False)

    async def list(self, owner: str) -> builtins.list[SessionInfo]:
        """This key's sessions, here and (with a shared registry) on other replicas."""
        here = [s.info() for s in self.table.per_key(owner)]
        return here + [r.info() for r in await self.served_elsewhere(owner)]

    def sessions_of(self, owner: str) -> builtins.list[Session]:
        """This key's sessions served here and started."""
        return [s for s in self.table.per_key(owner) if s.ready.done()]

    async def served_elsewhere(self, owner: str) -> builtins.list[SessionRecord]:
        return await self._placement.served_elsewhere(owner)

    async def delete_hibernated(self, owner: str, session_id: str) -> bool:
        """Delete a hibernated session (record and snapshot) without restoring it; False if
        it is not hibernated."""
        return await self.hibernation.asleep(owner, session_id) is not None \
            and await self.hibernation.forget(owner, session_id)

    async def delete(self, session: Session) -> None:
        """Stop the session's kernel and remove its sandbox and workspace; its sockets close."""
        if not session.ready.done():
            await asyncio.wait({session.ready})
        self.packages.cancel(session)
        await self._lifecycle.discard(session, remove_files=True)

    async def reap_once(self) -> int:
        return await self._upkeep.reap_once()

    async def renew_leases(self) -> None:
        await self._upkeep.renew_leases()
