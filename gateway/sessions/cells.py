"""Cells: what handlers do with a located session's cells — run one (REST, /v1 WebSocket or
a Jupyter client's execute_request, all through the session's FIFO turn), answer input(),
interrupt, and reach the kernel for a Jupyter client's other messages.

Placement → the turn → ``CellRunner.run`` (cell.py) → the timeout ladder (ladder.py).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway import errors, policy
from gateway.kernel import KernelConnection, Message, Route
from gateway.metrics import Metrics
from gateway.models import ExecuteRequest, ExecuteResult, SessionInfo, SessionState
from gateway.sessions.cell import Cell, CellRunner, StdinHook
from gateway.sessions.files import SessionFiles
from gateway.sessions.lifecycle import Lifecycle
from gateway.sessions.placement import Placement
from gateway.sessions.session import Session
from gateway.settings import Settings

T = TypeVar("T")


class Cells:
    def __init__(self, settings: Settings, metrics: Metrics, lifecycle: Lifecycle,
                 placement: Placement, files: SessionFiles,
                 stdin_hook: StdinHook | None = None) -> None:
        self._settings = settings
        self._lifecycle = lifecycle
        self._placement = placement
        self._runner = CellRunner(settings, metrics, lifecycle.replace_kernel,
                                  lifecycle.handing_off, files, stdin_hook)
        self._detached: set[asyncio.Task[Any]] = set()

    def check(self, req: ExecuteRequest) -> float:
        """Validate a cell before anything starts; returns its timeout. Raises 400s, 413."""
        return policy.execute_timeout(self._settings, req)

    async def execute(self, session: Session, req: ExecuteRequest, *,
                      request_id: str | None = None, interactive: bool = False,
                      on_start: Callable[[], None] | None = None) -> ExecuteResult:
        """Run one cell in its FIFO turn; its timeout counts from its own start. Every event
        goes to the session's watchers tagged ``request_id``; ``interactive`` runs ask them
        for input() instead of failing it; ``on_start`` is called when its turn comes.
        Raises QueueFull, QueueTimeout, SessionNotFound, ShuttingDown, KernelStartFailed,
        EntrypointMissing."""
        cell = Cell(request_id=request_id or f"rest-{secrets.token_hex(6)}", code=req.code,
                    timeout_s=self.check(req),
                    stdin=list(req.stdin) if req.stdin is not None else None,
                    interactive=interactive, entrypoint=req.entrypoint)
        result = await self._run(session, cell, bounded=True, on_start=on_start)
        assert result is not None  # only Jupyter cells are ever aborted
        return result

    def spawn_execute(self, session: Session, req: ExecuteRequest, request_id: str, *,
                      interactive: bool = True, on_start: Callable[[], None] | None = None
                      ) -> asyncio.Task[ExecuteResult]:
        """A run that outlives the client that asked for it (detachable)."""
        return self._detach(self.execute(session, req, request_id=request_id,
                                         interactive=interactive, on_start=on_start))

    def submit_jupyter(self, session: Session, msg: Message, reply_to: Route
                       ) -> asyncio.Task[ExecuteResult | None]:
        """A Jupyter client's execute_request, run in the session's FIFO like any cell (no
        gateway deadline nor queue bound: Jupyter semantics); its replies go to
        ``reply_to``."""
        cell = Cell(request_id=f"jupyter-{str(msg['header'].get('msg_id', ''))[:64]}",
                    message=msg, reply_to=reply_to)
        return self._detach(self._run(session, cell, bounded=False))

    def _detach(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return task

    async def _run(self, session: Session, cell: Cell, *, bounded: bool,
                   on_start: Callable[[], None] | None = None) -> ExecuteResult | None:
        _check_open(session)
        turn = session.queue.turn(
            max_waiting=self._settings.max_queue_per_session if bounded else None,
            max_wait_s=self._settings.max_queue_wait_s if bounded else None,
            name=cell.request_id)
        async with turn:
            if self._lifecycle.closing:  # no new cell starts now: the next process serves it
                raise errors.ShuttingDown("the gateway is shutting down; retry the call")
            _check_open(session)
            if on_start is not None:
                on_start()
            return await self._runner.run(session, cell)

    async def restart(self, session: Session) -> SessionInfo:
        """Fresh interpreter, same id; waits for a running cell's turn (FIFO)."""
        async with session.queue.turn():
            _check_open(session)
            await self._lifecycle.replace_kernel(session, "starting")
            session.touch()
        return session.info()

    async def reply_input(self, session: Session, request_id: str, value: str) -> None:
        """Answer the pending input() of run ``request_id``. Raises BadRequest if none."""
        pending = session.pending_input.pop(request_id, None)
        if pending is None or not session.slot.live:
            raise errors.BadRequest(f"no input is pending for request {request_id!r}")
        session.slot.connection().reply_input(value, pending)

    async def interrupt(self, session: Session) -> None:
        """Interrupt whatever cell runs, whoever sent it."""
        session.queue.note_interrupt()
        await session.slot.interrupt()

    async def live_connection(self, session: Session) -> KernelConnection:
        """The kernel connection for a Jupyter client's non-execute message, starting a fresh
        kernel if the last one died. Raises SessionNotFound once closed, SessionMoved."""
        _check_open(session)
        if not await self._placement.holds(session):
            raise errors.SessionMoved(f"session {session.id!r} is served by another gateway now")
        if not session.slot.live:
            async with session.queue.turn():
                _check_open(session)
                if not session.slot.live:
                    await self._lifecycle.replace_kernel(session, "restarting")
        return session.slot.connection()


def _check_open(session: Session) -> None:
    if session.closed:
        raise errors.SessionNotFound(f"session {session.id!r} was deleted")
    if session.state == SessionState.hibernated:  # while the call waited: locate it again
        raise errors.SessionHibernated(f"session {session.id!r} was hibernated; retry")
