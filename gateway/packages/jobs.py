"""PackageJob: one install request's state and log; SessionJobs: a session's jobs, run one at
a time in order, kept (the last ``KEEP``) while the session lives, cancelled with it."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from gateway import errors
from gateway.models import PackageInfo, PackageJobInfo, PackageJobStatus

KEEP = 32  # finished jobs kept per session
MAX_WAITING = 8  # jobs queued behind the running one, per session
LOG_LINES = 500  # lines of a job's log kept (the kernel and log_tail read from them)
TAIL_LINES = 40  # lines in log_tail


class PackageJob:
    def __init__(self, requirements: list[str]) -> None:
        self.id = secrets.token_hex(8)
        self.requirements = requirements
        self.status = PackageJobStatus.queued
        self.installed: list[PackageInfo] = []
        self.error: str | None = None
        self.created_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self._logged = 0  # lines ever logged: a reader's cursor counts these
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.status in (PackageJobStatus.succeeded, PackageJobStatus.failed)

    def log(self, line: str) -> None:
        self._log.append(line)
        self._logged += 1
        self._wake()

    def set_status(self, status: PackageJobStatus) -> None:
        self.status = status
        if self.done:
            self.finished_at = datetime.now(UTC)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def lines_since(self, since: int) -> tuple[list[str], int]:
        """Log lines after cursor ``since`` (those still kept) and the next cursor."""
        first = self._logged - len(self._log)
        start = max(since, first) - first
        return list(self._log)[start:], self._logged

    async def changed(self, since: int, wait_s: float) -> None:
        """Return once there is a line after ``since``, the job ended, or ``wait_s`` passed."""
        if self._logged > since or self.done:
            return
        try:
            await asyncio.wait_for(self._changed.wait(), wait_s)
        except TimeoutError:
            pass

    def info(self) -> PackageJobInfo:
        return PackageJobInfo(
            job_id=self.id, status=self.status, packages=self.requirements,
            installed=self.installed, error=self.error,
            log_tail="\n".join(list(self._log)[-TAIL_LINES:]), created_at=self.created_at,
            finished_at=self.finished_at)


class SessionJobs:
    """The jobs of one session."""

    def __init__(self) -> None:
        self.jobs: dict[str, PackageJob] = {}
        self.turn = asyncio.Lock()  # held by the running job
        self.closed = False

    def submit(self, job: PackageJob,
               run: Callable[[PackageJob], Coroutine[Any, Any, None]]) -> None:
        """Queue ``job``: ``run(job)`` starts now and takes ``turn`` (so the session's jobs run
        one at a time, in order). Raises QueueFull."""
        waiting = sum(1 for j in self.jobs.values() if j.status == PackageJobStatus.queued)
        if waiting >= MAX_WAITING:
            raise errors.QueueFull(f"{waiting} package jobs are already waiting in this "
                                   "session")
        self.jobs[job.id] = job
        job.task = asyncio.create_task(run(job))
        finished = [j for j in self.jobs.values() if j.done]
        for old in finished[:max(0, len(finished) - KEEP)]:
            del self.jobs[old.id]

    def cancel(self) -> None:
        """The session ended: every job still queued or running stops."""
        self.closed = True
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
