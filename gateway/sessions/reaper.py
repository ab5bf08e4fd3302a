"""Reaper: which sessions to remove, by named criteria (after jupyter_server's culler), and
the loop that asks every ``reap_interval_s`` and survives one failed pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.sessions.session import Session
from gateway.settings import Settings

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock

    def over_lifetime(self, session: Session) -> bool:
        life_s = self._settings.max_lifetime_s
        return bool(life_s) and self._clock() - session.created_mono > life_s

    def idle_for_too_long(self, session: Session) -> bool:
        idle_s = self._settings.idle_timeout_s
        return bool(idle_s) and self._clock() - session.active_mono > idle_s

    def watched(self, session: Session) -> bool:
        """A WebSocket or Jupyter client is connected (kept unless ``reap_connected``)."""
        return not self._settings.reap_connected and bool(
            session.events.watchers or len(session.watchers))

    def doomed(self, sessions: list[Session]) -> list[tuple[Session, str]]:
        """(session, why) for each session to remove now; busy sessions are kept from idling
        out, whoever's cell runs (REST, WebSocket or Jupyter)."""
        found: list[tuple[Session, str]] = []
        for session in sessions:
            if not session.ready.done() or session.closed:
                continue
            if self.over_lifetime(session):
                found.append((session, "lifetime"))
            elif (self.idle_for_too_long(session) and not session.busy
                  and not self.watched(session)):
                found.append((session, "idle"))
        return found

    async def run_forever(self, reap_once: Callable[[], Awaitable[int]]) -> None:
        while True:
            await asyncio.sleep(self._settings.reap_interval_s)
            try:
                await reap_once()
            except Exception:  # one failure must not stop reaping
                log.exception("reaper pass failed")
