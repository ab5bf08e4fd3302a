"""SessionTable: the sessions this gateway serves, by (owner, session id) and by kernel id,
with the capacity checks that guard adding one."""

from __future__ import annotations

import builtins
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
        if len(self._sessions) >= self._settings.max_sessions:
            raise errors.CapacityExceeded(
                f"the gateway is at its limit of {self._settings.max_sessions} sessions; "
                "delete a session or try later")
        owned = sum(1 for (o, _) in self._sessions if o == owner)
        if owned >= self._settings.max_sessions_per_key:
            raise errors.KeyCapacityExceeded(
                f"this API key has {owned} sessions, its limit; delete one first")

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
