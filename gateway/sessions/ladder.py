"""TimeoutLadder: a cell past its deadline is interrupted, given a grace period, and if the
kernel ignores that, replaced (state lost). Also the "aborted, send it again" rule."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.errors import KernelDied, KernelTimeout
from gateway.kernel import Message
from gateway.sessions.session import Session

log = logging.getLogger(__name__)

Replace = Callable[[Session, str], Awaitable[None]]  # (session, Jupyter status to announce)
MAX_SENDS = 2


class TimeoutLadder:
    def __init__(self, interrupt_grace_s: float, replace: Replace) -> None:
        self.grace_s = interrupt_grace_s
        self._replace = replace

    async def run(self, session: Session, send: Callable[[], Awaitable[Message]],
                  timeout_s: float | None) -> tuple[Message | None, bool]:
        """(reply, timed_out) of the request ``send()`` makes, within ``timeout_s`` (None: no
        deadline). After a timeout the reply is the interrupted one, or None if the kernel
        had to be replaced. Raises KernelDied."""
        reply: Message | None = None
        for _attempt in range(MAX_SENDS):
            task = asyncio.ensure_future(send())
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                return await self._climb(session, task), True
            reply = task.result()
            # right after an interrupt the kernel may abort the next request: send it again
            if reply["content"].get("status") != "aborted":
                break
        return reply, False

    async def _climb(self, session: Session, task: asyncio.Future[Message]) -> Message | None:
        with contextlib.suppress(KernelDied, KernelTimeout):
            await session.slot.connection().interrupt(self.grace_s)
            done, _ = await asyncio.wait({task}, timeout=self.grace_s)
            if done and task.exception() is None:
                return task.result()
        task.cancel()
        log.info("kernel ignored interrupt, restarting session_id=%s", session.id)
        await self._replace(session, "restarting")
        return None
