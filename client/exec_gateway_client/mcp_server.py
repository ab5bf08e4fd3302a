"""``exec-gateway-mcp``: an MCP server (official ``mcp`` SDK, ``MCPServer``) that gives an agent
a stateful Python sandbox through exec-gateway sessions, over stdio or streamable HTTP.

Tools: ``execute_python`` (text plus PNG/JPEG image content; a failed cell is a tool error with
its traceback), ``list_sessions``, ``restart_session``, ``delete_session``. A call that names
no session uses the connection's default session: one per stdio server process, one per MCP
session (``Mcp-Session-Id``) over streamable HTTP; requests of the sessionless 2026-07-28 HTTP
protocol share one default per server process. Default sessions are deleted when the server
stops; the gateway's idle reaper removes those of MCP sessions that went away before.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Callable

import anyio
import anyio.abc
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent

from exec_gateway_client import errors
from exec_gateway_client.async_gateway import AsyncGateway, AsyncSession
from exec_gateway_client.models import Result

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
A persistent Python interpreter (an IPython kernel in a sandbox). Use execute_python to run
code; variables, imports, function definitions and files written to the working directory
stay available to later calls in the same session, until the session is restarted or deleted.
Calls without session_id share this connection's default session."""

EXECUTE_DOC = """\
Run Python code in a persistent sandboxed IPython kernel and return what it produced.

State persists: variables, imports and definitions from earlier calls in the same session are
still there, and files written to the current directory stay too. Leave session_id empty to use
this conversation's default session; name a session (letters, digits, '.', '_', '-', up to 128
characters) to keep separate interpreters apart. A new name creates that session.

Returns stdout, stderr, the value of the last expression (as 'Out: ...'), and any PNG/JPEG
images displayed (e.g. matplotlib figures: call plt.show() or leave the figure as the last
expression). If the code raises, the result is an error with the exception and traceback; the
session and its other variables are kept, so fix the code and call again.

Limits: each call stops after timeout_s seconds (server default, usually 30; at most 600) and
the answer says 'timeout'; if the interpreter had to be restarted to stop it, variables are
lost and the answer says so. Memory is limited per session (exceeding it reports
'memory_exceeded'). input() is not available (it raises EOFError or
StdinNotImplementedError). Output beyond the server's cap (about 1 MB) is cut off. The sandbox
may have no network access: do not rely on downloading packages or data."""

LIST_DOC = """\
List this token's sandbox sessions: id, state (idle/busy/...), generation (how many times the
interpreter was replaced), number of executions and last activity. The default session of
this conversation is marked; it exists only after the first execute_python call."""

RESTART_DOC = """\
Restart a session's Python interpreter: every variable, import and definition is gone (files
in its working directory are not). Use it when the interpreter is stuck or its state is
broken. Leave session_id empty for this conversation's default session."""

DELETE_DOC = """\
Delete a session: stop its interpreter and remove its files. Its state cannot be recovered; a
later execute_python with the same session_id starts from scratch. Leave session_id empty for
this conversation's default session."""

CLEANUP_TIMEOUT_S = 10.0

STATUS_NOTES = {
    "timeout": "the cell was stopped: it ran past its timeout",
    "interrupted": "the cell was interrupted",
    "memory_exceeded": "the cell ran out of memory",
    "dead": "the Python process died (e.g. a crash or os._exit)",
    "restore_failed": "the hibernated session could not be restored; it starts fresh and the "
                      "code was not run",
}


class Sessions:
    """The gateway client and the default session of each MCP connection."""

    def __init__(self, gw: AsyncGateway, prefix: str) -> None:
        self.gw = gw
        self.prefix = prefix
        self.defaults: dict[str, str] = {}  # connection key → gateway session id
        self._handles: dict[str, AsyncSession] = {}  # created once, not once per call

    def default_for(self, ctx: Context | None) -> str:
        headers = ctx.headers if ctx is not None else None
        key = (headers.get("mcp-session-id") if headers else None) or ""
        if key not in self.defaults:
            self.defaults[key] = f"{self.prefix}-{secrets.token_hex(6)}"
        return self.defaults[key]

    def resolve(self, session_id: str | None, ctx: Context | None) -> AsyncSession:
        sid = session_id or self.default_for(ctx)
        if sid not in self._handles:
            self._handles[sid] = self.gw.session(sid, keep=True)
        return self._handles[sid]

    async def delete(self, session: AsyncSession) -> None:
        self._handles.pop(session.id, None)
        await session.delete()

    async def aclose(self) -> None:
        """Delete the default sessions (at once: a stopping stdio server has seconds left)."""

        async def delete(session_id: str) -> None:
            with contextlib.suppress(errors.GatewayError):
                await self.gw.session(session_id).delete()

        async with anyio.create_task_group() as tg:
            for session_id in self.defaults.values():
                tg.start_soon(delete, session_id)
        await self.gw.aclose()


def render(result: Result) -> list[ContentBlock]:
    """A result as MCP content: one text block (output, value, error, what happened to the
    state), then one image block per PNG/JPEG output."""
    parts: list[str] = []
    images: list[ContentBlock] = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    for output in result.outputs:
        image = output.image
        if image is not None:
            images.append(ImageContent(type="image", mime_type=image[0],
                                       data=base64.b64encode(image[1]).decode()))
        elif output.text is not None:
            prefix = "Out: " if output.type == "execute_result" else ""
            parts.append(prefix + output.text)
    if result.error is not None:
        trace = "\n".join(result.error.traceback).strip()
        parts.append(trace or f"{result.error.ename}: {result.error.evalue}")
    note = STATUS_NOTES.get(result.status)
    if note is not None:
        state = ("variables were kept" if result.state_preserved
                 else "the interpreter was restarted: earlier variables are gone")
        parts.append(f"[{result.status}: {note}; {state}]")
    elif not result.state_preserved:
        parts.append("[note: the interpreter was replaced before this call; variables from "
                     "earlier calls are gone]")
    if result.truncated:
        parts.append("[output truncated: it exceeded the server's limit]")
    if not parts and not images:
        parts.append("(no output)")
    return [TextContent(type="text", text="\n".join(parts)), *images]


def build_server(gw: AsyncGateway, *, prefix: str = "mcp") -> tuple[MCPServer, Sessions]:
    """The MCP server and its session book (close that with ``aclose()`` at the end)."""
    sessions = Sessions(gw, prefix)
    server: MCPServer = MCPServer("exec-gateway", instructions=INSTRUCTIONS)

    @server.tool(description=EXECUTE_DOC)
    async def execute_python(code: str, ctx: Context, session_id: str | None = None,
                             timeout_s: float | None = None) -> CallToolResult:
        session = sessions.resolve(session_id, ctx)
        try:
            result = await session.run(code, timeout_s=timeout_s)
        except errors.GatewayError as exc:
            raise ToolError(f"session {session.id}: {exc}") from exc
        return CallToolResult(content=render(result), is_error=result.status != "ok")

    @server.tool(description=LIST_DOC)
    async def list_sessions(ctx: Context) -> str:
        default = sessions.default_for(ctx)
        try:
            found = await gw.sessions()
        except errors.GatewayError as exc:
            raise ToolError(str(exc)) from exc
        if not found:
            return "no sessions"
        return "\n".join(
            f"{s.id}{' (default)' if s.id == default else ''}: state={s.state} "
            f"generation={s.generation} executions={s.execution_count} "
            f"last_activity={s.last_activity.isoformat(timespec='seconds')}" for s in found)

    @server.tool(description=RESTART_DOC)
    async def restart_session(ctx: Context, session_id: str | None = None) -> str:
        session = sessions.resolve(session_id, ctx)
        try:
            info = await session.restart()
        except errors.GatewayError as exc:
            raise ToolError(f"session {session.id}: {exc}") from exc
        return (f"session {session.id} restarted: a fresh interpreter "
                f"(generation {info.generation})")

    @server.tool(description=DELETE_DOC)
    async def delete_session(ctx: Context, session_id: str | None = None) -> str:
        session = sessions.resolve(session_id, ctx)
        try:
            await sessions.delete(session)
        except errors.GatewayError as exc:
            raise ToolError(f"session {session.id}: {exc}") from exc
        return f"session {session.id} deleted"

    return server, sessions


async def serve(args: argparse.Namespace) -> None:
    gw = AsyncGateway(args.url, args.token)
    server, sessions = build_server(gw, prefix=args.session_prefix)
    try:
        async with anyio.create_task_group() as tg:
            if args.transport == "stdio":
                await tg.start(_on_signal, tg.cancel_scope.cancel)
                await server.run_stdio_async()  # until the client closes our stdin
            else:
                app = server.streamable_http_app(streamable_http_path=args.path, host=args.host)
                http = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                                     log_level="info"))
                await tg.start(_on_signal, lambda: setattr(http, "should_exit", True))
                await http.serve()  # a signal ends it gracefully; the cleanup below runs
            tg.cancel_scope.cancel()
    finally:
        with anyio.move_on_after(CLEANUP_TIMEOUT_S, shield=True):
            await sessions.aclose()


async def _on_signal(stop: Callable[[], object], *,
                     task_status: anyio.abc.TaskStatus[None]) -> None:
    """Call ``stop`` on every SIGTERM/SIGINT, so the server ends through its cleanup instead
    of dying (MCP clients SIGTERM a stdio server that does not exit in time; uvicorn raises a
    signal it handled again once it stopped)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exec-gateway-mcp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="gateway URL (default: $EXEC_GATEWAY_URL or "
                   "http://127.0.0.1:8888)")
    p.add_argument("--token", help="API token (default: $EXEC_GATEWAY_TOKEN)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="http: address to listen on")
    p.add_argument("--port", type=int, default=9000, help="http: port to listen on")
    p.add_argument("--path", default="/mcp", help="http: the MCP endpoint's path")
    p.add_argument("--session-prefix", default="mcp", help="prefix of default session ids")
    args = p.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call drowns the server's
    try:
        anyio.run(serve, args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
