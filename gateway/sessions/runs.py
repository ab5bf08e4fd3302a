"""Runs: a session's background cells (execute with ``wait: false``), polled by run id.

A run is an ordinary cell taking its turn in the session's FIFO (``Cells``), so every
watcher sees it like any other run (events tagged ``run-<run_id>``). It is ``queued`` until
its turn comes, ``running``, then ``finished`` with its ExecuteResult (or the error that kept
it from running). Finished runs are kept ``run_retention_s`` (at most
``run_keep_per_session`` of them per session, the oldest dropped first), then 404
``run_not_found``. A run belongs to its session: it goes when the session goes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import weakref
from dataclasses import dataclass, field

from gateway import errors
from gateway.models import (
    ErrorDetail,
    ExecuteRequest,
    ExecuteResult,
    RunAccepted,
    RunInfo,
    RunState,
)
from gateway.sessions.cells import Cells
from gateway.sessions.session import Session
from gateway.settings import Settings

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # the longest long-poll (GET ...?wait_s=)


@dataclass
class Run:
    id: str
    task: asyncio.Task[ExecuteResult] | None = None
    started: bool = False
    finished_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def request_id(self) -> str:
        return f"run-{self.id}"

    @property
    def state(self) -> RunState:
        if self.finished_at is not None:
            return RunState.finished
        return RunState.running if self.started else RunState.queued


class Runs:
    def __init__(self, settings: Settings, cells: Cells) -> None:
        self._settings = settings
        self._cells = cells
        self._book: weakref.WeakKeyDictionary[Session, dict[str, Run]] = (
            weakref.WeakKeyDictionary())

    async def submit(self, session: Session, req: ExecuteRequest) -> RunAccepted:
        """Queue ``req`` in the session's FIFO and return at once. Raises what a cell raises
        before it is queued: 400s, 413, QueueFull, SessionNotFound, ShuttingDown."""
        self._cells.check(req)
        runs = self._runs_of(session)
        run = Run(secrets.token_hex(8))

        def started() -> None:
            run.started = True

        task = self._cells.spawn_execute(session, req, run.request_id, interactive=False,
                                         on_start=started)
        await asyncio.sleep(0)  # the cell's first step: queued, started, or refused
        if task.done() and not task.cancelled() and isinstance(task.exception(),
                                                                 errors.GatewayError):
            raise task.exception()  # type: ignore[misc]
        run.task = task
        task.add_done_callback(lambda done: self._finished(run, done))
        runs[run.id] = run
        log.info("run queued session_id=%s run_id=%s", session.id, run.id)
        return RunAccepted(run_id=run.id, status=run.state,
                           status_url=f"/v1/sessions/{session.id}/runs/{run.id}")

    def _finished(self, run: Run, task: asyncio.Task[ExecuteResult]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: a removed run's error is not "never retrieved"
        run.finished_at = time.monotonic()
        run.done.set()

    async def get(self, session: Session, run_id: str, wait_s: float = 0.0) -> RunInfo:
        """The run's state; with ``wait_s``, once it finished or after ``wait_s`` seconds.
        Raises RunNotFound, ValidationFailed (wait_s)."""
        if not math.isfinite(wait_s) or not 0 <= wait_s <= MAX_WAIT_S:
            raise errors.ValidationFailed(f"wait_s must be between 0 and {MAX_WAIT_S:g}")
        run = self._find(session, run_id)
        if wait_s and run.finished_at is None:
            try:
                async with asyncio.timeout(wait_s):
                    await run.done.wait()
            except TimeoutError:
                pass
        return self._info(session, run)

    async def cancel(self, session: Session, run_id: str) -> None:
        """Remove a queued or finished run; interrupt a running one (it then finishes
        ``interrupted`` and stays). Raises RunNotFound."""
        run = self._find(session, run_id)
        if run.state == RunState.running:
            await self._cells.interrupt(session)
            return
        self._runs_of(session).pop(run.id, None)
        if run.task is not None and not run.task.done():
            run.task.cancel()  # still waiting for its turn: it leaves the queue

    def _find(self, session: Session, run_id: str) -> Run:
        run = self._runs_of(session).get(run_id)
        if run is None:
            raise errors.RunNotFound(f"no run {run_id!r} in session {session.id!r} (finished "
                                     f"runs are kept {self._settings.run_retention_s:g}s)")
        return run

    def _runs_of(self, session: Session) -> dict[str, Run]:
        """The session's runs, without those past their retention or beyond the cap."""
        runs = self._book.setdefault(session, {})
        horizon = time.monotonic() - self._settings.run_retention_s
        finished = sorted((r for r in runs.values() if r.finished_at is not None),
                          key=lambda r: r.finished_at or 0.0)
        excess = len(finished) - self._settings.run_keep_per_session
        for i, run in enumerate(finished):
            if i < excess or (run.finished_at or 0.0) < horizon:
                del runs[run.id]
        return runs

    def _info(self, session: Session, run: Run) -> RunInfo:
        info = RunInfo(run_id=run.id, status=run.state)
        if run.state == RunState.queued:
            info.queue_position = session.queue.position(run.request_id)
        elif run.state == RunState.finished and run.task is not None:
            if run.task.cancelled():
                info.error = ErrorDetail(code="cancelled", message="the run was cancelled")
            elif (exc := run.task.exception()) is None:
                info.result = run.task.result()
            elif isinstance(exc, errors.GatewayError):
                info.error = ErrorDetail(code=exc.code, message=exc.message)
            else:
                log.error("run failed run_id=%s", run.id, exc_info=exc)
                info.error = ErrorDetail(code="internal_error", message="internal error")
        return info
