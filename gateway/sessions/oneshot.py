"""OneShots: POST /v1/run — a stateless run on a fresh sandbox from the warm pool, destroyed
after the answer, and its graded test cases, each in a fresh sandbox of its own.

A one-shot sandbox is an anonymous, unlisted Session (never in the table, the registry or a
lease) run by the same CellRunner, timeout ladder and kernel slot as any session; its place
is held in the SessionTable (``hold``), so it counts against capacity. It never reuses a
session's kernel, and a kernel that ignores a timeout's interrupt is stopped, not replaced:
the run ends there. Test cases run several at a time, up to ``run_concurrency`` sandboxes
for one request (fewer when the gateway has fewer free places). Sandboxes are destroyed
after the answer is sent, not before: their places are given back once they are gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway import errors, grading, policy
from gateway.metrics import Metrics
from gateway.models import (
    ErrorInfo,
    ExecuteRequest,
    ExecuteResult,
    ExecuteStatus,
    InlineFile,
    Limits,
    RunRequest,
    SessionState,
    Stdin,
    TestCase,
    TestResult,
    TestsReport,
)
from gateway.sessions.cell import STATE_LOST, Cell, CellRunner, StdinHook, death_error
from gateway.sessions.files import SessionFiles
from gateway.sessions.kernel_slot import Kernels
from gateway.sessions.lifecycle import Lifecycle
from gateway.sessions.session import Session
from gateway.sessions.table import SessionTable
from gateway.settings import Settings
from gateway.workspace import split_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One cell of a one-shot program."""

    code: str
    entrypoint: str | None = None


@dataclass
class _Batch:
    """One request's sandboxes: a gate of its places, and their disposals (running after the
    answer; the request's places are given back when the last one is done)."""

    gate: asyncio.Semaphore
    files: list[tuple[str, bytes]] = field(default_factory=list)  # placed in every sandbox
    disposals: list[asyncio.Task[None]] = field(default_factory=list)


def _decoded(files: list[InlineFile]) -> list[tuple[str, bytes]]:
    """(path, bytes) of a run's inline files. Raises ValidationFailed for bad base64."""
    decoded = []
    for inline in files:
        try:
            decoded.append((inline.path, base64.b64decode(inline.content_base64, validate=True)))
        except (binascii.Error, ValueError):
            raise errors.ValidationFailed(
                f"files: {inline.path!r}: content_base64 is not valid base64") from None
    return decoded


def lines(stdin: Stdin | None) -> list[str] | None:
    """A client's stdin as the lines input() returns: a string is split into lines."""
    if stdin is None:
        return None
    return stdin.splitlines() if isinstance(stdin, str) else list(stdin)


class OneShots:
    def __init__(self, settings: Settings, metrics: Metrics, lifecycle: Lifecycle,
                 table: SessionTable, kernels: Kernels, files: SessionFiles,
                 stdin_hook: StdinHook | None = None) -> None:
        self._settings = settings
        self._lifecycle = lifecycle
        self._table = table
        self._kernels = kernels
        self._files = files
        self._runner = CellRunner(settings, metrics, self._retire, handing_off=lambda: False,
                                  files=files, stdin_hook=stdin_hook)
        self._live: set[Session] = set()
        self._background: set[asyncio.Task[None]] = set()

    def check(self, req: RunRequest) -> float:
        """Validate a run before anything starts; returns its timeout. Raises 400s, 413."""
        tests = req.tests or []
        if len(tests) > self._settings.max_tests:
            raise errors.ValidationFailed(
                f"{len(tests)} tests; at most {self._settings.max_tests} (max_tests)")
        timeout = self._timeout(req.code, req.stdin, req.timeout_s)
        for inline in req.files or []:
            split_path(inline.path)  # raises InvalidPath
        for test in tests:
            self._timeout(test.code or "", test.stdin, test.timeout_s)
            if test.compare == "regex" and test.expected_stdout is not None:
                grading.check_pattern(test.expected_stdout)
        return timeout

    def _timeout(self, code: str, stdin: Stdin | None, timeout_s: float | None) -> float:
        return policy.execute_timeout(
            self._settings, ExecuteRequest(code=code, stdin=lines(stdin), timeout_s=timeout_s))

    async def run(self, owner: str, req: RunRequest) -> ExecuteResult:
        """The submission's result (``session_id`` null), with its tests graded when asked.
        Raises what ``check`` raises, CapacityExceeded, KeyCapacityExceeded,
        EntrypointMissing, KernelStartFailed, ShuttingDown."""
        timeout = self.check(req)
        limits = policy.resolve_limits(self._settings, req.limits)
        files = _decoded(req.files or [])
        tests = req.tests or []
        wanted = min(1 + len(tests), self._settings.run_concurrency)
        places = contextlib.ExitStack()
        batch = _Batch(asyncio.Semaphore(places.enter_context(self._table.hold(owner, wanted))),
                       files)
        try:
            self._kernels.pool.refill()  # pooled kernels beyond what capacity now allows go
            outcomes = await asyncio.gather(
                self._program(owner, limits, [Step(req.code, req.entrypoint)],
                              lines(req.stdin), timeout, batch),
                *(self._grade(owner, limits, req, test, i, batch)
                  for i, test in enumerate(tests)),
                return_exceptions=True)
        finally:
            self._spawn(self._give_back(batch, places))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # the submission's error, or a bug
                raise outcome
        submission = outcomes[0]
        assert isinstance(submission, list)
        result: ExecuteResult = submission[0]
        if req.tests is not None:
            graded = [o for o in outcomes[1:] if isinstance(o, TestResult)]
            passed = sum(1 for t in graded if t.passed)
            result.tests = TestsReport(passed=passed, failed=len(graded) - passed, results=graded)
        return result

    async def _program(self, owner: str, limits: Limits, steps: list[Step],
                       stdin: list[str] | None, timeout_s: float, batch: _Batch
                       ) -> list[ExecuteResult]:
        """Run ``steps`` in a fresh sandbox, stopping at the first that is not ``ok``, within
        one deadline; ``stdin`` answers their input() calls in order. The sandbox is
        destroyed in the background (its place in ``batch`` is free once it is gone)."""
        await batch.gate.acquire()
        try:
            if self._lifecycle.closing:
                raise errors.ShuttingDown("the gateway is shutting down")
            session = self._lifecycle.new_session(owner, f"run-{secrets.token_hex(8)}", limits,
                                                  {})
        except BaseException:
            batch.gate.release()
            raise
        self._live.add(session)
        try:
            await self._lifecycle.start_kernel(session)
            for path, data in batch.files:
                await self._files.put(session, path, data)
            deadline = time.monotonic() + timeout_s
            results: list[ExecuteResult] = []
            for step in steps:
                result = await self._step(session, step, stdin, deadline)
                result.session_id = None
                if result.error is not None:  # no next call: the sandbox goes anyway
                    result.error.evalue = result.error.evalue.removesuffix(STATE_LOST)
                results.append(result)
                if result.status != ExecuteStatus.ok:
                    break
            return results
        finally:
            batch.disposals.append(self._spawn(self._destroy(session, batch.gate)))

    async def _step(self, session: Session, step: Step, stdin: list[str] | None,
                    deadline: float) -> ExecuteResult:
        if not session.slot.live:  # died after the previous step answered
            return ExecuteResult(
                session_id=None, execution_count=None, generation=session.generation,
                status=ExecuteStatus.dead, state_preserved=False,
                error=death_error(session.slot.exit_info), duration_ms=0.0)
        cell = Cell(request_id=f"{session.id}-{secrets.token_hex(3)}", code=step.code,
                    timeout_s=max(deadline - time.monotonic(), 0.001), stdin=stdin,
                    entrypoint=step.entrypoint)
        result = await self._runner.run(session, cell)
        assert result is not None  # only Jupyter cells are ever aborted
        return result

    async def _grade(self, owner: str, limits: Limits, req: RunRequest, test: TestCase,
                     index: int, batch: _Batch) -> TestResult:
        """The submission, then the test's code (and main() when asked), in a fresh sandbox;
        compared with what the test expects."""
        name = test.name or f"test {index + 1}"
        steps = [Step(req.code, None if test.code else req.entrypoint)]
        if test.code:
            steps.append(Step(test.code, req.entrypoint))
        timeout = self._timeout(test.code or "", test.stdin, test.timeout_s or req.timeout_s)
        try:
            results = await self._program(owner, limits, steps, lines(test.stdin), timeout,
                                          batch)
        except errors.GatewayError as exc:
            return TestResult(name=name, passed=False, status=ExecuteStatus.error,
                              expected_stdout=test.expected_stdout, duration_ms=0.0,
                              error=ErrorInfo(ename=exc.code, evalue=exc.message))
        return await _judge(name, test, results)

    async def _retire(self, session: Session, announce: str) -> None:
        """The ladder's last rung for a one-shot sandbox: its kernel ignored the timeout's
        interrupt, so it is stopped, never replaced (the run ends with this cell)."""
        await session.slot.stop(grace_s=0)
        session.set_state(SessionState.dead)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("one-shot sandbox cleanup failed", exc_info=task.exception())

    async def _destroy(self, session: Session, gate: asyncio.Semaphore) -> None:
        try:
            await self._dispose(session)
        finally:
            self._live.discard(session)
            gate.release()

    async def _give_back(self, batch: _Batch, places: contextlib.ExitStack) -> None:
        """The request's places, once its sandboxes are gone."""
        try:
            await asyncio.gather(*batch.disposals, return_exceptions=True)
        finally:
            places.close()
            self._kernels.pool.refill()

    async def _dispose(self, session: Session) -> None:
        """Destroy a one-shot sandbox: kernel, sandbox and files; the pool refills."""
        session.set_state(SessionState.closed)
        try:
            await session.slot.stop(grace_s=0)
        finally:
            if session.workspace:
                await self._kernels.volumes.remove(session.workspace)
            self._kernels.pool.refill()

    async def close(self) -> None:
        """Destroy the sandboxes of runs still going (the gateway stops)."""
        await asyncio.gather(*(self._dispose(s) for s in list(self._live)),
                             *list(self._background), return_exceptions=True)


async def _judge(name: str, test: TestCase, results: list[ExecuteResult]) -> TestResult:
    last = results[-1]
    stdout = "".join(r.stdout for r in results)
    passed = last.status == ExecuteStatus.ok
    diff: str | None = None
    error = last.error
    if test.expected_stdout is not None:
        try:
            same = await grading.stdout_matches(stdout, test.expected_stdout, test.compare)
        except TimeoutError:
            same = False
            error = error or ErrorInfo(ename="RegexTimeout", evalue=(
                f"the expected_stdout regex took over {grading.REGEX_DEADLINE_S:g}s to match"))
        if not same:
            passed = False
            diff = grading.short_diff(test.expected_stdout, stdout)
    if "expected_result" in test.model_fields_set and not grading.same_json(
            last.result, test.expected_result):
        passed = False
        diff = grading.short_diff(json.dumps(test.expected_result, indent=1, sort_keys=True),
                                  json.dumps(last.result, indent=1, sort_keys=True))
    cpu = [r.cpu_ms for r in results if r.cpu_ms is not None]
    peaks = [r.memory_peak_mb for r in results if r.memory_peak_mb is not None]
    return TestResult(
        name=name, passed=passed, status=last.status, stdout=stdout,
        stderr="".join(r.stderr for r in results), expected_stdout=test.expected_stdout,
        result=last.result, diff=diff, error=error,
        duration_ms=round(sum(r.duration_ms for r in results), 3),
        cpu_ms=round(sum(cpu), 3) if cpu else None, memory_peak_mb=max(peaks, default=None))
