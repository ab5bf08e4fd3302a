"""Records: the registry writes of the session layer (never on the execute hot path)."""

from __future__ import annotations

import contextlib

from gateway import errors
from gateway.registry import Registry
from gateway.sessions.session import Session
from gateway.settings import Settings


class Records:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self._settings = settings
        self.registry = registry

    async def save(self, session: Session) -> None:
        """Write the session's record (on state changes; activity is batched by the reaper)."""
        await self.registry.put(
            session.record(self._settings.instance_id, self._settings.advertised_url))

    async def save_activity(self, sessions: list[Session]) -> None:
        """Write the records of sessions used since their last write (execution count, last
        activity): batched off the execute path, for re-adoption and other replicas."""
        for session in sessions:
            if session.active_mono > session.saved_mono and session.ready.done() \
                    and not session.closed:
                session.saved_mono = session.active_mono
                await self.save(session)

    async def save_quietly(self, session: Session) -> None:
        with contextlib.suppress(errors.GatewayError):
            await self.save(session)
