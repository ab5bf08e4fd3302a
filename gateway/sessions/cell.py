"""One cell's run, whatever front door sent it: output collection, stdin, the WebSocket
events, the status classification, and the ExecuteResult.

A ``Cell`` from REST or the /v1 WebSocket carries code; one from a Jupyter channels client
carries that client's own ``execute_request`` and where its replies go. Both run the same way
(the caller holds the session's turn): busy while running, counted, published to every
watcher of every kind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import entrypoint, errors
from gateway.errors import KernelDied
from gateway.events import EVENT_OVERHEAD, event_from_iopub
from gateway.kernel import KernelConnection, Message, Route
from gateway.launchers import ExitInfo
from gateway.launchers.meters import Usage
from gateway.metrics import Metrics
from gateway.models import ErrorInfo, ExecuteResult, ExecuteStatus, RestoreReport, SessionState
from gateway.output import OutputCollector
from gateway.policy import EOF_INPUT
from gateway.sessions.files import SessionFiles
from gateway.sessions.ladder import Replace, TimeoutLadder
from gateway.sessions.session import Session
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Cell:
    request_id: str
    code: str = ""
    timeout_s: float | None = None  # None: no gateway deadline (Jupyter semantics)
    stdin: list[str] | None = None  # answers for input(), consumed; None: see interactive
    interactive: bool = False
    message: Message | None = None  # a Jupyter client's own execute_request ...
    reply_to: Route | None = None  # ... and where its shell and stdin replies go
    entrypoint: str | None = None  # after the code, call this function; its value → result
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def client_session(self) -> str:
        return str(self.message["header"].get("session", "")) if self.message else ""


# a kernel's own input_request the gateway answers itself (a package request from
# gateway/kernel_pip.py): True when it took the message
StdinHook = Callable[[Session, KernelConnection, Message], bool]


class CellRunner:
    def __init__(self, settings: Settings, metrics: Metrics, replace: Replace,
                 handing_off: Callable[[], bool], files: SessionFiles,
                 stdin_hook: StdinHook | None = None) -> None:
        self._settings = settings
        self._stdin_hook = stdin_hook
        self._files = files  # what the cell changed in the workspace
        self._metrics = metrics
        self._replace = replace
        self._handing_off = handing_off  # the gateway stops and leaves kernels running
        self._ladder = TimeoutLadder(settings.interrupt_grace_s, replace)

    async def run(self, session: Session, cell: Cell) -> ExecuteResult | None:
        """Run ``cell``; the caller holds the session's turn. None for a Jupyter cell aborted
        by an earlier error of its own client (ipykernel's ``stop_on_error``). Raises
        ShuttingDown, KernelStartFailed."""
        started = time.perf_counter()
        restored, session.restored = session.restored, None  # the first answer says it
        if restored is not None and restored.status == "restore_failed" and cell.message is None:
            return self._restore_failed(session, cell, restored, started)
        preserved = restored is None
        if not session.slot.live:
            await self._replace(session, "restarting")
            preserved = False
        conn = session.slot.connection()
        if _aborted_by_earlier_error(session, cell):
            self._reply_aborted(conn, cell)
            return None
        since_ns = await self._files.before_cell(session)
        collector = OutputCollector(self._settings.max_output_bytes,
                                    self._settings.max_outputs_per_cell)
        status: ExecuteStatus | None = None
        reply: Message | None = None
        session.set_state(SessionState.busy)
        session.touch()
        meter = await session.slot.meter()
        if meter is not None:
            meter.start()
        try:
            reply, timed_out = await self._ladder.run(
                session, lambda: self._send(session, conn, cell, collector), cell.timeout_s)
            if timed_out:
                status = ExecuteStatus.timeout
                preserved = preserved and reply is not None
        except KernelDied:
            if self._handing_off():  # the kernel lives on, for the next gateway process
                raise errors.ShuttingDown(
                    "the gateway is shutting down; the cell runs on in the session") from None
            info = session.slot.exit_info
            oom = info is not None and info.oom_killed
            status = ExecuteStatus.memory_exceeded if oom else ExecuteStatus.dead
            preserved = False
            collector.error = collector.error or death_error(info)
        finally:
            usage = meter.stop() if meter is not None else Usage()
            session.touch()
            session.pending_input.pop(cell.request_id, None)
            if session.state == SessionState.busy:
                session.set_state(SessionState.idle)
        if status is None:
            status = _status_of(session, reply, collector)
        status, value = _entrypoint_outcome(cell, status, collector)
        self._count_reply(session, conn, cell, reply, status)
        changed, changed_truncated = await self._files.after_cell(session, since_ns,
                                                                  collector.error)
        common: dict[str, Any] = {
            "session_id": session.id, "execution_count": session.execution_count,
            "generation": session.generation, "state_preserved": preserved,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "cpu_ms": usage.cpu_ms, "memory_peak_mb": _peak_mb(session, status, usage),
            "files_changed": changed, "files_changed_truncated": changed_truncated,
            "restored": restored}
        try:
            result = ExecuteResult(
                status=status, stdout=collector.stdout_text, stderr=collector.stderr_text,
                outputs=collector.outputs, error=collector.error, truncated=collector.truncated,
                result=value, **common)
            dumped = result.model_dump(mode="json")
            size = len(result.model_dump_json())
        except ValueError:  # never expected (output is sanitised); the result must still go out
            log.exception("cell result could not be encoded session_id=%s", session.id)
            result = ExecuteResult(status=ExecuteStatus.error, truncated=True, error=ErrorInfo(
                ename="OutputError", evalue="the cell's output could not be encoded"), **common)
            dumped = result.model_dump(mode="json")
            size = None
        session.events.publish({"type": "result", "id": cell.request_id, "result": dumped},
                               size if size is None else size + EVENT_OVERHEAD)
        self._metrics.executes.labels(result.status.value).inc()
        self._metrics.execute_seconds.observe(result.duration_ms / 1000)
        return result

    def _restore_failed(self, session: Session, cell: Cell, restored: RestoreReport,
                        started: float) -> ExecuteResult:
        """The answer to the first cell after a failed restore: not run (its code expects
        state that is not there); the session has a fresh interpreter for the next one."""
        result = ExecuteResult(
            session_id=session.id, execution_count=session.execution_count,
            generation=session.generation, status=ExecuteStatus.restore_failed,
            state_preserved=False, restored=restored,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            error=ErrorInfo(ename="RestoreFailed", evalue=(
                f"{restored.error}; the session has a fresh interpreter and an empty "
                "workspace now, and this cell was not run"), traceback=[]))
        session.events.publish({"type": "result", "id": cell.request_id,
                                "result": result.model_dump(mode="json")})
        self._metrics.executes.labels(result.status.value).inc()
        return result

    async def _send(self, session: Session, conn: KernelConnection, cell: Cell,
                    collector: OutputCollector) -> Message:
        route = self._router(session, conn, cell, collector)
        if cell.message is not None:
            return await conn.request("shell", cell.message, on_message=route, wait_idle=True)
        interactive = cell.stdin is not None or cell.interactive
        reply = await conn.execute(cell.code, allow_stdin=interactive, on_message=route)
        if cell.entrypoint is None or reply["content"].get("status") != "ok":
            return reply
        return await conn.execute(entrypoint.call_code(cell.entrypoint), allow_stdin=interactive,
                                  on_message=route, store_history=False)

    def _router(self, session: Session, conn: KernelConnection, cell: Cell,
                collector: OutputCollector) -> Route:
        """Where the cell's iopub and stdin messages go: the result, the /v1 watchers, and
        for input() the cell's stdin, its Jupyter client, or the /v1 watchers."""
        stdin = cell.stdin  # consumed in place: the cells of one run may share one list
        publish, rid = session.events.publish, cell.request_id
        max_event_bytes = self._settings.max_output_bytes
        hook = self._stdin_hook

        def on_message(channel: str, msg: Message) -> None:
            msg_type, content = msg["msg_type"], msg["content"]
            if channel == "iopub":
                collector.add(msg_type, content)
                event = event_from_iopub(msg_type, content, max_event_bytes)
                if event is not None:
                    event["id"] = rid
                    # charged what the kernel sent (cleaning and cutting only shrink it)
                    publish(event, min(msg.get("content_bytes", max_event_bytes),
                                       max_event_bytes) + EVENT_OVERHEAD)
            elif channel == "stdin" and hook is not None and msg_type == "input_request" \
                    and hook(session, conn, msg):
                return  # the kernel asked the gateway itself (only ever for its own session)
            elif channel == "stdin" and cell.reply_to is not None:
                cell.reply_to(channel, msg)
            elif channel == "stdin" and msg_type == "input_request":
                if stdin is not None:
                    conn.reply_input(stdin.pop(0) if stdin else EOF_INPUT, msg)
                    return
                session.pending_input[rid] = msg
                publish({"type": "input_request", "id": rid,
                         "prompt": str(content.get("prompt", ""))[:10_000],
                         "password": bool(content.get("password", False))})

        return on_message

    @staticmethod
    def _count_reply(session: Session, conn: KernelConnection, cell: Cell,
                     reply: Message | None, status: ExecuteStatus) -> None:
        if reply is None or not session.slot.live or session.slot.connection() is not conn:
            return
        count = reply["content"].get("execution_count")
        if isinstance(count, int):
            session.execution_count = count
        if cell.reply_to is not None:
            cell.reply_to("shell", reply)
            if status == ExecuteStatus.error:
                session.jupyter_error = (cell.client_session, time.monotonic())

    @staticmethod
    def _reply_aborted(conn: KernelConnection, cell: Cell) -> None:
        assert cell.message is not None and cell.reply_to is not None
        reply = conn.session.msg("execute_reply", {"status": "aborted", "execution_count": None},
                                 parent=cell.message["header"])
        cell.reply_to("shell", reply)


def _aborted_by_earlier_error(session: Session, cell: Cell) -> bool:
    """A Jupyter cell sent before its own client's previous cell failed is aborted, as the
    kernel would ("Run All" stops at the first error); other clients' errors never count."""
    if cell.message is None or not cell.message["content"].get("stop_on_error", True):
        return False
    if session.jupyter_error is None:
        return False
    client, failed_at = session.jupyter_error
    return client == cell.client_session and cell.queued_at < failed_at


def _status_of(session: Session, reply: Message | None,
               collector: OutputCollector) -> ExecuteStatus:
    content = reply["content"] if reply is not None else {}
    if content.get("status") == "ok":
        return ExecuteStatus.ok
    ename = collector.error.ename if collector.error else content.get("ename")
    if ename == "KeyboardInterrupt" and session.queue.interrupt_requested:
        return ExecuteStatus.interrupted
    if ename == "MemoryError":
        return ExecuteStatus.memory_exceeded
    if collector.error is None and content.get("status") == "error":
        collector.error = ErrorInfo(ename=str(content.get("ename", "")),
                                    evalue=str(content.get("evalue", "")), traceback=[])
    return ExecuteStatus.error


def _entrypoint_outcome(cell: Cell, status: ExecuteStatus, collector: OutputCollector
                        ) -> tuple[ExecuteStatus, Any]:
    """(status, main()'s value) of a cell with an entrypoint. Raises EntrypointMissing."""
    if cell.entrypoint is None:
        return status, None
    returned = entrypoint.take_value(collector)
    if status != ExecuteStatus.ok:
        entrypoint.tidy_traceback(collector)
        return status, None
    if returned.missing:
        raise errors.EntrypointMissing(
            f"entrypoint {cell.entrypoint!r}: the code defines no function {cell.entrypoint}()")
    if not returned.found:
        collector.error = ErrorInfo(
            ename="ResultTooLarge", evalue=f"{cell.entrypoint}()'s value does not fit in "
            "what is left of max_output_bytes", traceback=[])
        return ExecuteStatus.error, None
    return status, returned.value


def _peak_mb(session: Session, status: ExecuteStatus, usage: Usage) -> float | None:
    """The measured peak; a sandbox killed for memory (its figures gone with it) was at its
    limit."""
    if usage.memory_peak_mb is None and status == ExecuteStatus.memory_exceeded:
        info = session.slot.exit_info
        if info is not None and info.oom_killed and session.limits.memory_mb:
            return float(session.limits.memory_mb)
    return usage.memory_peak_mb


STATE_LOST = "; variables were lost, the next call starts a fresh interpreter"


def death_error(info: ExitInfo | None) -> ErrorInfo:
    reason = info.reason if info else "the kernel went away"
    name = "MemoryLimitExceeded" if info and info.oom_killed else "KernelDied"
    return ErrorInfo(ename=name, evalue=f"{reason}{STATE_LOST}", traceback=[])
