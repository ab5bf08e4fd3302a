"""SessionTable: the sessions this gateway serves, by (owner, session id) and by kernel id,
with the capacity checks that guard adding one. One-shot sandboxes (POST /v1/run) are not
sessions, but hold places here (``hold``): they count against the same capacity."""

from __future__ import annotations

import builtins
import collections
import contextlib
from collections.abc import AsyncIterator, Iterator

from gateway import errors
from gateway.sessions.session import Session
from gateway.settings import Settings

SessionKey = tuple[str, str]


class SessionTable:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions: dict[SessionKey, Session] = {}
        self._by_kernel: dict[str, SessionKey] = {}
        self._held: collections.Counter[str] = collections.Counter()  # owner → one-shot places

    @property
    def occupied(self) -> int:
        """Sessions plus places held for one-shot sandboxes: what max_sessions bounds."""
        return len(self._sessions) + self._held.total()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(builtins.list(self._sessions.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._sessions

    def get(self, key: SessionKey) -> Session | None:
        return self._sessions.get(key)

    def key_of_kernel(self, kernel_id: str) -> SessionKey | None:
        return self._by_kernel.get(kernel_id)

    def per_key(self, owner: str) -> builtins.list[Session]:
        return [s for (o, _), s in self._sessions.items() if o == owner]

    def add(self, session: Session) -> None:
        self._sessions[session.key] = session
        self._by_kernel[session.kernel_id] = session.key

    def remove(self, session: Session) -> None:
        """Forget ``session`` (not a newer session that took its key)."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            self._by_kernel.pop(session.kernel_id, None)

    def clear(self) -> builtins.list[Session]:
        sessions = builtins.list(self._sessions.values())
        self._sessions.clear()
        self._by_kernel.clear()
        return sessions

    def check_capacity(self, owner: str) -> None:
        """Raises CapacityExceeded (gateway full) or KeyCapacityExceeded (this key's share)."""
        if self.occupied >= self._settings.max_sessions:
            raise errors.CapacityExceeded(
                f"the gateway is at its limit of {self._settings.max_sessions} sessions; "
                "delete a session or try later")
        owned = self._owned(owner)
        if owned >= self._settings.max_sessions_per_key:
            raise errors.KeyCapacityExceeded(
                f"this API key has {owned} sessions, its limit; delete one first")

    def _owned(self, owner: str) -> int:
        return sum(1 for (o, _) in self._sessions if o == owner) + self._held[owner]

    @contextlib.contextmanager
    def hold(self, owner: str, wanted: int) -> Iterator[int]:
        """Up to ``wanted`` places (at least one) for ``owner``'s one-shot sandboxes while the
        block runs; yields how many. Raises CapacityExceeded, KeyCapacityExceeded."""
        self.check_capacity(owner)
        free = min(self._settings.max_sessions - self.occupied,
                   self._settings.max_sessions_per_key - self._owned(owner))
        granted = max(1, min(wanted, free))
        self._held[owner] += granted
        try:
            yield granted
        finally:
            self._held[owner] -= granted
            if self._held[owner] <= 0:
                del self._held[owner]

    @contextlib.asynccontextmanager
    async def reserve(self, session: Session, *, check: bool = True) -> AsyncIterator[Session]:
        """Hold ``session``'s place while the block starts it (capacity checked first when
        ``check``); on success its ``ready`` resolves, on failure it leaves the table and
        ``ready`` carries the error (as a GatewayError) to the calls waiting on it."""
        if check:
            self.check_capacity(session.owner)
        self.add(session)
        try:
            yield session
        except BaseException as exc:
            self.remove(session)
            failure = exc if isinstance(exc, errors.GatewayError) else errors.KernelStartFailed(
                f"session {session.id!r} could not be started: {type(exc).__name__}")
            session.ready.set_exception(failure)
            session.ready.exception()  # retrieved: nobody may be waiting
            raise
        session.ready.set_result(None)
