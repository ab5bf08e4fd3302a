"""CellQueue: one session's FIFO of cells, whatever front door they came through.

``async with queue.turn(max_waiting, max_wait_s)`` waits for this call's turn (asyncio.Lock
is FIFO); the queue is bounded in length (QueueFull) and in waiting time (QueueTimeout), both
429. ``busy`` is derived from it: a cell runs or waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway import errors


class CellQueue:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._line: list[object] = []  # waiting calls in arrival order (the Lock serves FIFO)
        self.interrupt_requested = False  # someone asked to interrupt the running cell

    @property
    def waiting(self) -> int:
        return len(self._line)

    def position(self, name: str) -> int | None:
        """Where the waiting call ``name`` stands (1: next to run), None if not waiting."""
        try:
            return self._line.index(name) + 1
        except ValueError:
            return None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    @property
    def busy(self) -> bool:
        return self._lock.locked() or self.waiting > 0

    @contextlib.asynccontextmanager
    async def turn(self, *, max_waiting: int | None = None, max_wait_s: float | None = None,
                   name: str | None = None) -> AsyncIterator[None]:
        """Hold the session's turn for the block (``name``: what ``position`` knows it by).
        Raises QueueFull if ``max_waiting`` calls already wait, QueueTimeout if the turn
        does not come within ``max_wait_s``."""
        if max_waiting is not None and self.waiting >= max_waiting and self._lock.locked():
            raise errors.QueueFull(
                f"{self.waiting} calls are already waiting for this session; retry later")
        token: object = name if name is not None else object()
        self._line.append(token)
        try:
            async with asyncio.timeout(max_wait_s):
                await self._lock.acquire()
        except TimeoutError:
            raise errors.QueueTimeout(
                f"another cell kept this session busy for over {max_wait_s:g}s "
                "(max_queue_wait_s); retry later") from None
        finally:
            self._line.remove(token)
        try:
            self.interrupt_requested = False
            yield
        finally:
            self._lock.release()

    def note_interrupt(self) -> None:
        """An interrupt was sent: a KeyboardInterrupt in the running cell is then expected."""
        self.interrupt_requested = self._lock.locked()
