"""SessionManager: session_id → Session with its kernel; FIFO per session, timeout ladder, reaper.

Sessions are namespaced by owner (the API key's name): another key never sees them. Every
public method is called by the handlers and raises only GatewayError subclasses.

With a shared registry, each session is served by the one replica holding its lease (see
``gateway.registry``); the others forward to it (``errors.Forward``), and take the session
over once its lease expired (that replica crashed).
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import zmq.asyncio

from gateway import errors
from gateway.errors import KernelDied, KernelTimeout
from gateway.events import EventLog, event_from_iopub
from gateway.jupyter import status_message
from gateway.kernel import KernelConnection, Message, Route
from gateway.launchers import ExitInfo, KernelHandle, Launcher, LaunchSpec
from gateway.metrics import Metrics
from gateway.models import (
    SESSION_ID_RE,
    CreateSession,
    ErrorInfo,
    ExecuteRequest,
    ExecuteResult,
    ExecuteStatus,
    Limits,
    SessionInfo,
    SessionState,
)
from gateway.output import OutputCollector
from gateway.pool import KernelPool, boot_kernel
from gateway.registry import Registry, SessionRecord
from gateway.settings import Settings

log = logging.getLogger(__name__)

KERNEL_ID_NAMESPACE = uuid.UUID("6f1c9a52-43c8-4c36-9b8e-2d2f3f0c5e11")
EOF_INPUT = "\x04"  # ipykernel raises EOFError in input() for this reply


def kernel_id_for(owner: str, session_id: str) -> str:
    """Stable, UUID-shaped kernel id for a session (Jupyter routes require UUIDs)."""
    return str(uuid.uuid5(KERNEL_ID_NAMESPACE, f"{owner}/{session_id}"))


def check_session_id(session_id: str) -> str:
    if not SESSION_ID_RE.match(session_id):
        raise errors.InvalidSessionId(
            "session_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
        )
    return session_id


def _now() -> datetime:
    return datetime.now(UTC)


class Session:
    """One session's live state. Mutated only by the SessionManager."""

    def __init__(
        self, owner: str, session_id: str, limits: Limits, env: dict[str, str], events: EventLog
    ) -> None:
        self.owner = owner
        self.id = session_id
        self.kernel_id = kernel_id_for(owner, session_id)
        self.limits = limits
        self.env = env
        self.created_at = self.last_activity = _now()
        self.created_mono = self.active_mono = time.monotonic()
        self.saved_mono = 0.0  # active_mono when the record was last written
        self.generation = 0
        self.execution_count = 0
        self.state = SessionState.starting
        self.handle: KernelHandle | None = None
        self.conn: KernelConnection | None = None
        self.exit_info: ExitInfo | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.interrupt_requested = False
        self.events = events
        self.pending_input: dict[str, Message] = {}  # request id → the kernel's input_request
        self.jupyter_clients: set[Callable[[Message], None]] = set()  # channels WebSockets
        self.parked: dict[str, collections.deque[Message]] = {}  # iopub kept for gone clients
        self.parked_max = 0
        self.kernel_state = "starting"  # the kernel's own last iopub status
        self.lease_until = math.inf  # monotonic time the lease was last renewed to

    def tap(self, msg: Message) -> None:
        """Every iopub message of the kernel: to Jupyter clients, and parked for gone ones."""
        if msg["msg_type"] == "status":
            self.kernel_state = str(msg["content"].get("execution_state", self.kernel_state))
        for client in list(self.jupyter_clients):
            try:
                client(msg)
            except Exception:  # one broken client must not cost the others this message
                log.exception("jupyter client failed kernel_id=%s", self.kernel_id)
        for parked in self.parked.values():
            parked.append(msg)

    def park(self, client_session: str) -> None:
        """Keep iopub for a Jupyter client that went away, until it reconnects (bounded)."""
        if len(self.parked) >= 8:
            self.parked.pop(next(iter(self.parked)))
        self.parked[client_session] = collections.deque(maxlen=self.parked_max)

    @property
    def execution_state(self) -> str:
        """The state a Jupyter client expects: starting/idle/busy/restarting/dead."""
        if self.state in (SessionState.idle, SessionState.busy):
            return "busy" if self.state == SessionState.busy else (
                "busy" if self.kernel_state == "busy" else "idle")
        return "dead" if self.state == SessionState.closed else self.state.value

    def set_state(self, state: SessionState) -> None:
        """Change state and tell the session's watchers."""
        if state != self.state:
            self.state = state
            self.events.publish({"type": "status", "state": state.value,
                                 "generation": self.generation})
            if state in (SessionState.restarting, SessionState.dead):
                self.tap(status_message(state.value))

    def touch(self) -> None:
        self.last_activity = _now()
        self.active_mono = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.state == SessionState.closed

    @property
    def busy(self) -> bool:
        return self.lock.locked() or self.waiting > 0

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            kernel_id=self.kernel_id,
            state=self.state,
            generation=self.generation,
            created_at=self.created_at,
            last_activity=self.last_activity,
            execution_count=self.execution_count,
            queued=self.waiting,
            limits=self.limits,
        )

    def record(self, gateway_id: str, gateway_url: str | None = None) -> SessionRecord:
        return SessionRecord(
            session_id=self.id,
            owner=self.owner,
            kernel_id=self.kernel_id,
            gateway_id=gateway_id,
            state=self.state,
            generation=self.generation,
            created_at=self.created_at,
            last_activity=self.last_activity,
            execution_count=self.execution_count,
            limits=self.limits,
            handle=self.handle,
            gateway_url=gateway_url,
        )


class SessionManager:
    def __init__(
        self, settings: Settings, launcher: Launcher, registry: Registry, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.registry = registry
        self.metrics = metrics
        self._sessions: dict[tuple[str, str], Session] = {}
        self._zmq = zmq.asyncio.Context()
        self.pool = KernelPool(settings, launcher, self._zmq, metrics,
                               room=lambda: settings.max_sessions - len(self._sessions))
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False
        self._background: set[asyncio.Task[ExecuteResult]] = set()
        self._by_kernel: dict[str, tuple[str, str]] = {}  # kernel_id → (owner, session_id)
        self._shared = registry.name != "memory"  # other replicas may serve sessions too
        self._renewer: asyncio.Task[None] | None = None
        self._down: dict[str, float] = {}  # replica URL → until when it counts as down

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Check the launcher and clear its orphans. A launcher that is not ready yet (no
        engine, no image) is logged, not fatal: /readyz reports it until it is."""
        if self._shared:  # first: restoring many kernels may take longer than a lease
            self._renewer = asyncio.create_task(self._renew_forever())
        try:
            await self.launcher.check()
            await self._restore()
        except errors.LauncherUnavailable as exc:
            log.error("launcher not ready: %s", exc.message)
        self._reaper = asyncio.create_task(self._reap_forever())
        self.pool.refill()

    async def _restore(self) -> None:
        """Bring back this gateway's sessions from the registry after a restart.

        Kernels still running are re-adopted with their variables; sessions whose sandbox
        vanished come back ``dead`` (the next call starts a fresh interpreter). The launcher
        removes kernels of ours that no record claims. Sessions another replica took over
        while this one was down stay there.
        """
        records = await self.registry.list()
        mine = [r for r in records if r.gateway_id == self.settings.instance_id]
        granted = await self._claim([(r.owner, r.session_id) for r in mine])
        # registered at once (not ready yet): the renewer keeps their leases from here on
        restoring = [self._session_from(r) for r, ok in zip(mine, granted, strict=True) if ok]
        for session in restoring:
            self._register(session)
        handles = [r.handle for r in records if r.handle is not None]
        alive = {h.ref for h in await self.launcher.adopt(handles)}
        for session in restoring:
            if session.handle is not None and session.handle.ref in alive:
                await self._reconnect(session, session.handle)
            else:
                self._mark_vanished(session)
            session.ready.set_result(None)
            await self._save(session)
            log.info("session restored session_id=%s state=%s", session.id, session.state.value)
        self.metrics.sessions.set(len(self._sessions))

    def _session_from(self, record: SessionRecord) -> Session:
        """A Session (not yet connected) for a record another gateway process wrote."""
        session = Session(record.owner, record.session_id, record.limits, {},
                          EventLog(self.settings.ws_replay_events, self.settings.ws_replay_bytes))
        session.parked_max = self.settings.jupyter_buffer_messages
        session.generation, session.execution_count = record.generation, record.execution_count
        session.created_at, session.last_activity = record.created_at, record.last_activity
        session.handle = record.handle
        session.lease_until = time.monotonic() + self.settings.lease_ttl_s
        return session

    @staticmethod
    def _mark_vanished(session: Session) -> None:
        session.exit_info = ExitInfo(vanished=True)
        session.set_state(SessionState.dead)

    def _register(self, session: Session) -> None:
        self._sessions[(session.owner, session.id)] = session
        self._by_kernel[session.kernel_id] = (session.owner, session.id)

    def _unregister(self, session: Session) -> None:
        if self._sessions.get((session.owner, session.id)) is session:
            del self._sessions[(session.owner, session.id)]
            self._by_kernel.pop(session.kernel_id, None)

    async def _reconnect(self, session: Session, handle: KernelHandle) -> None:
        conn = KernelConnection(handle.connection, self._zmq)
        conn.iopub_tap = session.tap
        exited = asyncio.ensure_future(self.launcher.wait_exit(handle))
        try:
            await conn.connect(self.settings.kernel_start_timeout_s, exited)
        except (KernelDied, KernelTimeout) as exc:
            log.warning("could not re-adopt kernel session_id=%s: %s", session.id, exc)
            conn.close()
            exited.cancel()
            self._mark_vanished(session)
            return
        session.conn = conn
        session.kernel_state = "idle"
        session.set_state(SessionState.idle)
        session.watcher = asyncio.create_task(self._watch(session, conn, exited))

    @property
    def keep_kernels(self) -> bool:
        """Whether shutdown leaves kernels running for re-adoption (shared registry + docker)."""
        keep = self.settings.keep_kernels_on_shutdown
        if keep is None:
            keep = self.registry.name != "memory" and self.launcher.name == "docker"
        return keep

    async def close(self) -> None:
        """Stop the reaper and, unless they are kept for re-adoption, every kernel."""
        self._closing = True
        for task in (self._reaper, self._renewer):
            if task is not None:
                task.cancel()
        await self.pool.close()
        if self.keep_kernels:
            # a shared registry keeps the records and the leases are given up: the next
            # gateway process (or another replica, at its next call) takes the kernels over.
            # Calls still running get ShuttingDown (their cells run on); none restarts a kernel.
            handed_off = list(self._sessions.values())
            self._sessions.clear()
            self._by_kernel.clear()
            for session in handed_off:
                if session.conn is not None:
                    session.conn.close()
                if session.watcher is not None:
                    session.watcher.cancel()
                with contextlib.suppress(errors.GatewayError):
                    await self._save(session)
                    await self.registry.release(session.owner, session.id,
                                                self.settings.instance_id)
            log.info("left %d session kernels running for the next gateway process",
                     len(handed_off))
        else:
            await asyncio.gather(
                *(self._discard(s, remove_files=False) for s in list(self._sessions.values())),
                return_exceptions=True,
            )
        await self.launcher.close()
        await self.registry.close()
        self._zmq.term()

    # ------------------------------------------------------------------ lookup
    def _find(self, owner: str, session_id: str) -> Session:
        session = self._sessions.get((owner, check_session_id(session_id)))
        if session is None:
            raise errors.SessionNotFound(f"no session {session_id!r}")
        return session

    async def _locate(self, owner: str, session_id: str) -> Session:
        """The live session, served here: raises Forward if another replica serves it, else
        SessionNotFound. A local hit never touches the registry (the execute hot path)."""
        session = self._sessions.get((owner, check_session_id(session_id)))
        if session is not None and await self._holds(session):
            return await self._ready(session)
        taken = await self._elsewhere(owner, session_id, create=False)
        assert taken is not None  # (create=False: a session, or an exception)
        return taken

    async def _elsewhere(self, owner: str, session_id: str, *, create: bool) -> Session | None:
        """A session this gateway does not serve. Raises Forward to the replica holding its
        lease; takes it over once that lease expired; returns None if nobody has it and
        ``create`` (the lease is then this gateway's: open the session). Raises
        SessionNotFound, or OwnerUnreachable when the holder stays silent past its lease."""
        me, key = self.settings.instance_id, (owner, session_id)
        patience = self.settings.lease_ttl_s + self.settings.kernel_start_timeout_s
        deadline = time.monotonic() + patience
        while True:
            record, holder = await self.registry.lookup(owner, session_id)
            if holder in (None, me):
                if record is None and not create:
                    hint = "" if self.settings.create_on_execute else (
                        " (create it first with POST /v1/sessions)")
                    raise errors.SessionNotFound(f"no session {session_id!r}{hint}")
                if (await self._claim([key]))[0]:
                    return None if record is None else await self._take_over(record)
            elif record is not None and record.gateway_id == holder:
                if not record.gateway_url:
                    raise errors.OwnerUnreachable(
                        f"session {session_id!r} lives on gateway {record.gateway_id!r}, "
                        "which published no internal URL")
                if self._down.get(record.gateway_url, 0.0) < time.monotonic():
                    raise errors.Forward(record.gateway_url)
            # else: the holder is starting the session or taking it over, or just went down
            if time.monotonic() > deadline:
                raise errors.OwnerUnreachable(
                    f"session {session_id!r} is held by gateway {holder!r}, which does not answer")
            await asyncio.sleep(0.1)

    def owner_down(self, url: str) -> None:
        """The replica at ``url`` refused a forwarded call: wait for its leases to expire (or
        for it to come back) instead of forwarding there again at once."""
        self._down[url] = time.monotonic() + self.settings.lease_renew_s

    async def _claim(self, keys: builtins.list[tuple[str, str]]) -> builtins.list[bool]:
        return await self.registry.claim(keys, self.settings.instance_id,
                                         self.settings.lease_ttl_s)

    async def _holds(self, session: Session) -> bool:
        """Whether this gateway still serves ``session``. A registry call only when renewals
        have not got through for a whole lease (the registry was unreachable)."""
        if session.lease_until > time.monotonic():
            return True
        renewed = time.monotonic()
        if (await self._claim([(session.owner, session.id)]))[0]:
            session.lease_until = renewed + self.settings.lease_ttl_s
            return True
        await self._lose(session)
        return False

    async def _take_over(self, record: SessionRecord) -> Session:
        """Serve a session whose replica stopped renewing its lease (now held here): with its
        kernel if this host can reach it, else ``dead`` (the next call starts a fresh one)."""
        known = self._sessions.get((record.owner, record.session_id))
        if known is not None:
            return await self._ready(known)
        session = self._session_from(record)
        self._register(session)
        try:
            await self._save(session)  # names this gateway before it touches the kernel
            if record.handle is not None and await self.launcher.attach(record.handle):
                await self._reconnect(session, record.handle)
            else:
                # out of reach (another host): not ours to claim, so its gateway removes it
                session.handle = None
                self._mark_vanished(session)
        except BaseException as exc:  # the launcher cannot tell now: try again later
            self._unregister(session)
            with contextlib.suppress(errors.GatewayError):
                await self.registry.release(record.owner, record.session_id,
                                            self.settings.instance_id)
            failure = exc if isinstance(exc, errors.GatewayError) else errors.KernelStartFailed(
                f"could not take session {record.session_id!r} over: {type(exc).__name__}")
            session.ready.set_exception(failure)
            session.ready.exception()  # mark retrieved
            if isinstance(exc, Exception) and not isinstance(exc, errors.GatewayError):
                log.error("takeover failed session_id=%s", record.session_id, exc_info=exc)
                raise failure from exc
            raise
        session.ready.set_result(None)
        self.metrics.sessions.set(len(self._sessions))
        await self._save(session)
        log.info("session taken over session_id=%s from gateway=%s state=%s", session.id,
                 record.gateway_id, session.state.value)
        return session

    async def _lose(self, session: Session) -> None:
        """Another replica took ``session`` over (this one failed to renew its lease in
        time): stop serving it; stop its kernel unless the other replica adopted it."""
        log.warning("lost the lease of session_id=%s to another gateway", session.id)
        self._unregister(session)
        if await self._adopted_elsewhere(session):
            session.handle = None  # theirs now: only let go of it
        await self._stop_kernel(session)
        session.events.publish({"type": "moved"})  # its sockets close with 4503: reconnect
        session.set_state(SessionState.closed)
        self.metrics.sessions.set(len(self._sessions))

    async def _adopted_elsewhere(self, session: Session) -> bool:
        """Whether the replica that took ``session`` over uses its kernel. A takeover names
        itself in the record before it touches the kernel: a record still naming this
        replica is read again one renewal later before the kernel counts as nobody's."""
        ours = session.handle.ref if session.handle is not None else None
        for attempt in range(2):
            try:
                record = await self.registry.get(session.owner, session.id)
            except errors.GatewayError:
                return True  # cannot tell: never stop a kernel another replica may use
            if record is None:
                return False
            if record.gateway_id != self.settings.instance_id:
                return record.handle is not None and record.handle.ref == ours
            if attempt == 0:
                await asyncio.sleep(self.settings.lease_renew_s)
        return False

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
        sessions = builtins.list(self._sessions.values())
        renewed = time.monotonic()
        granted = await self._claim([(s.owner, s.id) for s in sessions])
        for session, ok in zip(sessions, granted, strict=True):
            current = self._sessions.get((session.owner, session.id))
            if current is None:
                # closed meanwhile: do not leave a renewed lease behind its deleted record
                await self.registry.release(session.owner, session.id, self.settings.instance_id)
            elif current is not session:  # deleted and made again meanwhile: it holds the lease
                current.lease_until = renewed + self.settings.lease_ttl_s
            elif ok:
                session.lease_until = renewed + self.settings.lease_ttl_s
            else:
                await self._lose(session)

    async def _save(self, session: Session) -> None:
        """Write the session's record (state changes only; never on the execute hot path)."""
        await self.registry.put(
            session.record(self.settings.instance_id, self.settings.advertised_url)
        )

    async def _ready(self, session: Session) -> Session:
        await asyncio.shield(session.ready)
        return session

    def count(self) -> int:
        return len(self._sessions)

    async def get(self, owner: str, session_id: str) -> SessionInfo:
        return (await self._locate(owner, session_id)).info()

    async def list(self, owner: str) -> list[SessionInfo]:
        """This key's sessions, here and (with a shared registry) on other replicas."""
        here = [s.info() for (o, _), s in self._sessions.items() if o == owner]
        return here + [r.info() for r in await self.served_elsewhere(owner)]

    async def served_elsewhere(self, owner: str) -> builtins.list[SessionRecord]:
        """This key's sessions that other replicas serve (none without a shared registry)."""
        if not self._shared:
            return []
        return [r for r in await self.registry.list(owner)
                if (owner, r.session_id) not in self._sessions]

    async def by_kernel(self, owner: str, kernel_id: str) -> Session:
        """The session whose kernel id is ``kernel_id``. Raises SessionNotFound (also for
        another key's kernel)."""
        key = self._by_kernel.get(kernel_id)
        if key is not None and key[0] == owner:
            return await self._locate(*key)
        if self._shared:  # served by another replica? (kernel ids derive from session ids)
            for record in await self.registry.list(owner):
                if record.kernel_id == kernel_id:
                    return await self._locate(owner, record.session_id)
        raise errors.SessionNotFound(f"no kernel {kernel_id!r}")

    def sessions_of(self, owner: str) -> builtins.list[Session]:
        return [s for (o, _), s in self._sessions.items() if o == owner and s.ready.done()]

    async def create_kernel(self, owner: str, env: dict[str, str] | None) -> Session:
        """A new session for a Jupyter client; env keys outside the allowlist are ignored
        (Jupyter clients send many ``KERNEL_*`` keys on their own)."""
        allowed = set(self.settings.env_allowlist)
        kept = {k: v for k, v in (env or {}).items() if k in allowed}
        session_id = uuid.uuid4().hex
        await self._claim([(owner, session_id)])
        return await self._open(owner, session_id, None, kept)

    async def live_connection(self, session: Session) -> KernelConnection:
        """The session's kernel connection, starting a fresh kernel if the last one died.
        Raises SessionNotFound once the session is closed."""
        if session.closed:
            raise errors.SessionNotFound(f"session {session.id!r} was deleted")
        if not await self._holds(session):
            raise errors.SessionMoved(f"session {session.id!r} is served by another gateway now")
        if session.conn is None or session.conn.dead:
            async with self._turn(session):
                if session.closed:
                    raise errors.SessionNotFound(f"session {session.id!r} was deleted")
                if session.conn is None or session.conn.dead:
                    await self._replace_kernel(session)
        assert session.conn is not None
        return session.conn

    # ------------------------------------------------------------------ create / delete
    def _resolve_limits(self, asked: Limits | None) -> Limits:
        default, maximum = self.settings.default_limits, self.settings.max_limits
        values = default.model_dump()
        for name, value in (asked.model_dump() if asked else {}).items():
            if value is None:
                continue
            top = getattr(maximum, name)
            if top is not None and value > top:
                raise errors.LimitOutOfRange(
                    f"limits.{name}={value} is above this server's maximum of {top}"
                )
            values[name] = value
        return Limits(**values)

    def _resolve_env(self, asked: dict[str, str] | None) -> dict[str, str]:
        env: dict[str, str] = {}
        allowed = set(self.settings.env_allowlist)
        for key, value in (asked or {}).items():
            if key not in allowed:
                raise errors.ValidationFailed(
                    f"env key {key!r} is not allowed; allowed keys: {sorted(allowed)}"
                )
            if len(value) > 4096 or any(ord(ch) < 32 for ch in value):
                raise errors.ValidationFailed(f"env value for {key!r} is too long or has "
                                              "control characters")
            env[key] = value
        return env

    async def create(self, owner: str, req: CreateSession) -> SessionInfo:
        """Create a session and start its kernel. Raises SessionExists, capacity errors."""
        session_id = req.session_id or uuid.uuid4().hex
        exists = errors.SessionExists(f"session {session_id!r} already exists")
        key = (owner, session_id)
        if key in self._sessions or await self.registry.get(owner, session_id):
            raise exists
        if not (await self._claim([key]))[0] or key in self._sessions:
            raise exists  # another replica or a concurrent call is creating it right now
        session = await self._open(owner, session_id, req.limits, req.env)
        return session.info()

    async def _get_or_open(self, owner: str, session_id: str) -> Session:
        session = self._sessions.get((owner, check_session_id(session_id)))
        if session is not None and await self._holds(session):
            return await self._ready(session)
        taken = await self._elsewhere(owner, session_id, create=self.settings.create_on_execute)
        if taken is not None:
            return taken
        session = self._sessions.get((owner, session_id))  # a concurrent call opened it
        if session is not None:
            return await self._ready(session)
        return await self._open(owner, session_id, None, None)

    async def _open(
        self, owner: str, session_id: str, limits: Limits | None, env: dict[str, str] | None
    ) -> Session:
        """Start a new session; the caller holds its lease (released here on failure)."""
        try:
            return await self._start_session(owner, session_id, limits, env)
        except BaseException:
            with contextlib.suppress(errors.GatewayError):
                await self.registry.release(owner, session_id, self.settings.instance_id)
            raise

    async def _start_session(
        self, owner: str, session_id: str, limits: Limits | None, env: dict[str, str] | None
    ) -> Session:
        if self._closing:
            raise errors.ShuttingDown("the gateway is shutting down")
        resolved_limits, resolved_env = self._resolve_limits(limits), self._resolve_env(env)
        if len(self._sessions) >= self.settings.max_sessions:
            raise errors.CapacityExceeded(
                f"the gateway is at its limit of {self.settings.max_sessions} sessions; "
                "delete a session or try later"
            )
        owned = sum(1 for (o, _) in self._sessions if o == owner)
        if owned >= self.settings.max_sessions_per_key:
            raise errors.KeyCapacityExceeded(
                f"this API key has {owned} sessions, its limit; delete one first"
            )
        events = EventLog(self.settings.ws_replay_events, self.settings.ws_replay_bytes)
        session = Session(owner, session_id, resolved_limits, resolved_env, events)
        session.parked_max = self.settings.jupyter_buffer_messages
        if self._shared:
            session.lease_until = time.monotonic() + self.settings.lease_ttl_s
        self._register(session)  # reserves the slot while starting
        try:
            await self._start_kernel(session)
        except BaseException as exc:
            self._unregister(session)
            session.ready.set_exception(
                exc if isinstance(exc, errors.GatewayError) else errors.KernelStartFailed(str(exc))
            )
            session.ready.exception()  # mark retrieved
            raise
        session.ready.set_result(None)
        self.metrics.sessions.set(len(self._sessions))
        await self._save(session)
        return session

    async def delete(self, owner: str, session_id: str) -> None:
        session = self._sessions.get((owner, check_session_id(session_id)))
        if session is None or not await self._holds(session):
            session = await self._locate(owner, session_id)  # forwards, takes over, or 404
        with contextlib.suppress(errors.GatewayError):
            await self._ready(session)
        await self._discard(session, remove_files=True)

    async def _discard(self, session: Session, *, remove_files: bool) -> None:
        self._unregister(session)
        session.set_state(SessionState.closed)
        self.metrics.sessions.set(len(self._sessions))
        handle = session.handle
        try:  # the record first, lease still held: no replica (nor our reaper) takes it over
            await self.registry.delete(session.owner, session.id)
        finally:
            await self._stop_kernel(session)
            if remove_files and handle is not None:
                await self.launcher.remove_workspace(handle)
        await self.registry.release(session.owner, session.id, self.settings.instance_id)
        self.pool.refill()
        log.info("session closed session_id=%s", session.id)

    # ------------------------------------------------------------------ kernels
    async def _start_kernel(self, session: Session) -> None:
        """Launch and connect a fresh kernel for ``session``. Raises KernelStartFailed."""
        started = time.perf_counter()
        pooled = not session.env and session.limits == self.settings.default_limits
        kernel = self.pool.take() if pooled else None
        if kernel is None:
            spec = LaunchSpec(
                session_id=session.id,
                kernel_id=session.kernel_id,
                owner=session.owner,
                limits=session.limits,
                env=session.env,
            )
            kernel = await boot_kernel(self.launcher, spec, self._zmq,
                                       self.settings.kernel_start_timeout_s)
            self.metrics.kernel_starts.labels(self.launcher.name).inc()
            self.metrics.kernel_start_seconds.observe(time.perf_counter() - started)
        handle, conn, exited = kernel.handle, kernel.conn, kernel.exited
        conn.iopub_tap = session.tap
        session.handle, session.conn, session.exit_info = handle, conn, None
        session.kernel_state = "idle"
        session.generation += 1
        session.execution_count = 0
        session.set_state(SessionState.idle)
        session.watcher = asyncio.create_task(self._watch(session, conn, exited))

    async def _watch(
        self, session: Session, conn: KernelConnection, exited: asyncio.Future[ExitInfo]
    ) -> None:
        info = await exited
        if session.conn is not conn:
            return
        session.exit_info = info
        session.set_state(SessionState.dead)
        conn.mark_dead(info.reason)
        self.metrics.kernel_deaths.labels("oom" if info.oom_killed else "exit").inc()
        log.info("kernel died session_id=%s reason=%s", session.id, info.reason)

    async def _stop_kernel(self, session: Session) -> None:
        conn, handle, watcher = session.conn, session.handle, session.watcher
        session.conn = session.watcher = None
        if watcher is not None:
            watcher.cancel()
        if conn is not None:
            conn.close()
        if handle is not None:
            await self.launcher.terminate(handle, self.settings.shutdown_grace_s)

    async def _replace_kernel(self, session: Session) -> None:
        if self._closing:  # a kept kernel is the next gateway process's to restart
            raise errors.ShuttingDown("the gateway is shutting down; retry the call")
        session.set_state(SessionState.restarting)
        await self._stop_kernel(session)
        try:
            await self._start_kernel(session)
        except errors.GatewayError:
            session.set_state(SessionState.dead)
            raise
        await self._save(session)

    async def restart(self, owner: str, session_id: str) -> SessionInfo:
        """Fresh interpreter, same id; waits for a running cell's turn (FIFO)."""
        session = await self._locate(owner, session_id)
        async with self._turn(session):
            await self._replace_kernel(session)
            session.touch()
        return session.info()

    async def interrupt(self, owner: str, session_id: str) -> None:
        session = await self._locate(owner, session_id)
        conn = session.conn
        if conn is None or conn.dead:
            return
        session.interrupt_requested = session.lock.locked()
        with contextlib.suppress(KernelDied, KernelTimeout):
            await conn.interrupt(self.settings.interrupt_grace_s)

    # ------------------------------------------------------------------ execute
    @contextlib.asynccontextmanager
    async def _turn(self, session: Session) -> AsyncIterator[None]:
        if session.waiting >= self.settings.max_queue_per_session and session.lock.locked():
            raise errors.QueueFull(
                f"session {session.id!r} already has {session.waiting} calls waiting; retry later"
            )
        session.waiting += 1
        try:
            await session.lock.acquire()
        finally:
            session.waiting -= 1
        try:
            yield
        finally:
            session.lock.release()

    def check_request(self, req: ExecuteRequest) -> float:
        """Validate sizes and timeout; returns the timeout in seconds. Raises GatewayError."""
        if len(req.code.encode("utf-8", "surrogatepass")) > self.settings.max_code_bytes:
            raise errors.PayloadTooLarge(
                f"code is larger than max_code_bytes={self.settings.max_code_bytes}"
            )
        if req.stdin is not None and len(req.stdin) > self.settings.max_stdin_lines:
            raise errors.ValidationFailed(
                f"stdin has more than {self.settings.max_stdin_lines} lines"
            )
        timeout = req.timeout_s if req.timeout_s is not None else self.settings.default_timeout_s
        if not math.isfinite(timeout) or not 0 < timeout <= self.settings.max_timeout_s:
            raise errors.ValidationFailed(
                f"timeout_s must be > 0 and <= {self.settings.max_timeout_s}"
            )
        return timeout

    async def attach(self, owner: str, session_id: str) -> Session:
        """The session a WebSocket watches (created if allowed)."""
        return await self._get_or_open(owner, session_id)

    async def execute(
        self,
        owner: str,
        session_id: str,
        req: ExecuteRequest,
        *,
        request_id: str | None = None,
        interactive: bool = False,
    ) -> ExecuteResult:
        """Run one cell in the session (created if allowed); FIFO behind earlier calls.

        Every event of the run goes to the session's EventLog tagged with ``request_id``;
        ``interactive`` runs ask the watchers for input() instead of failing it.
        """
        timeout_s = self.check_request(req)
        session = await self._get_or_open(owner, session_id)
        rid = request_id or f"rest-{secrets.token_hex(6)}"
        async with self._turn(session):
            started = time.perf_counter()
            result = await self._run(session, req, timeout_s, rid, interactive)
            result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            session.events.publish({"type": "result", "id": rid,
                                    "result": result.model_dump(mode="json")})
        self.metrics.executes.labels(result.status.value).inc()
        self.metrics.execute_seconds.observe(result.duration_ms / 1000)
        return result

    def spawn_execute(
        self, owner: str, session_id: str, req: ExecuteRequest, request_id: str
    ) -> asyncio.Task[ExecuteResult]:
        """Start an interactive run that outlives the client that asked for it (detachable)."""
        task = asyncio.create_task(
            self.execute(owner, session_id, req, request_id=request_id, interactive=True)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def reply_input(self, owner: str, session_id: str, request_id: str, value: str) -> None:
        """Answer the pending input() of run ``request_id``. Raises BadRequest if none."""
        session = self._find(owner, session_id)
        pending = session.pending_input.pop(request_id, None)
        if pending is None or session.conn is None:
            raise errors.BadRequest(f"no input is pending for request {request_id!r}")
        session.conn.reply_input(value, pending)

    async def _run(
        self,
        session: Session,
        req: ExecuteRequest,
        timeout_s: float,
        request_id: str,
        interactive: bool,
    ) -> ExecuteResult:
        if self._closing:  # no new cell starts now: the next gateway process serves it
            raise errors.ShuttingDown("the gateway is shutting down; retry the call")
        preserved = True
        if session.conn is None or session.conn.dead:
            await self._replace_kernel(session)
            preserved = False
        conn = session.conn
        assert conn is not None
        collector = OutputCollector(self.settings.max_output_bytes)
        stdin = list(req.stdin) if req.stdin is not None else None

        publish = session.events.publish
        max_event_bytes = self.settings.max_output_bytes

        def on_message(channel: str, msg: Message) -> None:
            msg_type, content = msg["msg_type"], msg["content"]
            if channel == "iopub":
                collector.add(msg_type, content)
                event = event_from_iopub(msg_type, content, max_event_bytes)
                if event is not None:
                    event["id"] = request_id
                    publish(event)
            elif channel == "stdin" and msg_type == "input_request":
                if stdin is not None:
                    conn.reply_input(stdin.pop(0) if stdin else EOF_INPUT, msg)
                    return
                session.pending_input[request_id] = msg
                publish({"type": "input_request", "id": request_id,
                         "prompt": str(content.get("prompt", ""))[:10_000],
                         "password": bool(content.get("password", False))})

        session.interrupt_requested = False
        session.set_state(SessionState.busy)
        session.touch()
        status: ExecuteStatus | None = None
        reply: Message | None = None
        try:
            reply, timed_out = await self._execute_with_deadline(
                session, conn, req.code, stdin is not None or interactive, on_message, timeout_s
            )
            if timed_out:  # the ladder ran: interrupt, then restart if that failed
                status = ExecuteStatus.timeout
                preserved = preserved and reply is not None
        except KernelDied:
            if self._closing and self.keep_kernels:  # the kernel lives on, for the next process
                raise errors.ShuttingDown(
                    "the gateway is shutting down; the cell runs on in the session") from None
            info = session.exit_info
            status = (ExecuteStatus.memory_exceeded if info and info.oom_killed
                      else ExecuteStatus.dead)
            preserved = False
            if collector.error is None:
                collector.error = _death_error(info)
        finally:
            session.touch()
            session.pending_input.pop(request_id, None)
            if session.state == SessionState.busy:
                session.set_state(SessionState.idle)
        if status is None:
            status = self._status_of(session, reply, collector)
        if reply is not None and session.conn is conn:
            count = reply["content"].get("execution_count")
            if isinstance(count, int):
                session.execution_count = count
        return ExecuteResult(
            session_id=session.id,
            execution_count=session.execution_count,
            generation=session.generation,
            status=status,
            state_preserved=preserved,
            stdout=collector.stdout_text,
            stderr=collector.stderr_text,
            outputs=collector.outputs,
            error=collector.error,
            truncated=collector.truncated,
            duration_ms=0.0,
        )

    async def _execute_with_deadline(
        self,
        session: Session,
        conn: KernelConnection,
        code: str,
        allow_stdin: bool,
        on_message: Route,
        timeout_s: float,
    ) -> tuple[Message | None, bool]:
        """(reply, timed_out). After a timeout the reply is the interrupted one, or None if
        the kernel had to be restarted."""
        for _attempt in range(2):
            task = asyncio.ensure_future(
                conn.execute(code, allow_stdin=allow_stdin, on_message=on_message)
            )
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                return await self._timeout_ladder(session, conn, task), True
            reply = task.result()
            # right after an interrupt the kernel may abort the next request: send it again
            if reply["content"].get("status") != "aborted":
                break
        return reply, False

    async def _timeout_ladder(
        self, session: Session, conn: KernelConnection, task: asyncio.Future[Message]
    ) -> Message | None:
        grace = self.settings.interrupt_grace_s
        with contextlib.suppress(KernelDied, KernelTimeout):
            await conn.interrupt(grace)
            done, _ = await asyncio.wait({task}, timeout=grace)
            if done and task.exception() is None:
                return task.result()
        task.cancel()
        log.info("kernel ignored interrupt, restarting session_id=%s", session.id)
        await self._replace_kernel(session)
        return None

    @staticmethod
    def _status_of(
        session: Session, reply: Message | None, collector: OutputCollector
    ) -> ExecuteStatus:
        content = reply["content"] if reply is not None else {}
        if content.get("status") == "ok":
            return ExecuteStatus.ok
        ename = collector.error.ename if collector.error else content.get("ename")
        if ename == "KeyboardInterrupt" and session.interrupt_requested:
            return ExecuteStatus.interrupted
        if ename == "MemoryError":
            return ExecuteStatus.memory_exceeded
        if collector.error is None and content.get("status") == "error":
            collector.error = ErrorInfo(
                ename=str(content.get("ename", "")), evalue=str(content.get("evalue", "")),
                traceback=[],
            )
        return ExecuteStatus.error

    # ------------------------------------------------------------------ reaper
    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            try:
                await self.reap_once()
            except Exception:  # one failure must not stop reaping
                log.exception("reaper pass failed")

    async def reap_once(self) -> int:
        """Remove idle and over-age sessions; returns how many. Busy sessions are kept.
        Each replica reaps the sessions it serves, having first taken over the sessions of
        replicas that stopped renewing their leases: every session is reaped once."""
        if self._shared:
            await self._take_over_orphans()
        now = time.monotonic()
        idle_s, life_s = self.settings.idle_timeout_s, self.settings.max_lifetime_s
        doomed: list[tuple[Session, str]] = []
        for session in list(self._sessions.values()):
            if not session.ready.done():
                continue
            if life_s and now - session.created_mono > life_s:
                doomed.append((session, "lifetime"))
            elif (idle_s and not session.busy and now - session.active_mono > idle_s
                  and (self.settings.reap_connected
                       or not (session.events.watchers or session.jupyter_clients))):
                doomed.append((session, "idle"))
        for session, why in doomed:
            log.info("reaping session_id=%s why=%s", session.id, why)
            self.metrics.reaped.labels(why).inc()
            await self._discard(session, remove_files=True)
        await self._save_activity()
        return len(doomed)

    async def _take_over_orphans(self) -> None:
        """Serve here the sessions whose lease nobody holds (their replica crashed, or stopped
        and did not come back within a lease): one registry call to claim them all."""
        orphans = [r for r in await self.registry.list()
                   if (r.owner, r.session_id) not in self._sessions]
        granted = await self._claim([(r.owner, r.session_id) for r in orphans])
        for record, ok in zip(orphans, granted, strict=True):
            if not ok:
                continue
            current = await self.registry.get(record.owner, record.session_id)
            if current is None:  # deleted meanwhile
                await self.registry.release(record.owner, record.session_id,
                                            self.settings.instance_id)
                continue
            with contextlib.suppress(errors.GatewayError):
                await self._take_over(current)

    async def _save_activity(self) -> None:
        """Write the records of sessions used since their last write (execution count, last
        activity): batched here, off the execute path, for re-adoption and other replicas."""
        for session in list(self._sessions.values()):
            used = session.active_mono > session.saved_mono
            if used and session.ready.done() and not session.closed:
                session.saved_mono = session.active_mono
                await self._save(session)


def _death_error(info: ExitInfo | None) -> ErrorInfo:
    reason = info.reason if info else "the kernel went away"
    name = "MemoryLimitExceeded" if info and info.oom_killed else "KernelDied"
    return ErrorInfo(
        ename=name,
        evalue=f"{reason}; variables were lost, the next call starts a fresh interpreter",
        traceback=[],
    )
