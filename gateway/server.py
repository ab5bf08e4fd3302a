"""HTTPServer: tornado's server with a connection cap, separate header and keep-alive
timeouts, TCP_NODELAY, and an accept loop that pauses (not spins) when descriptors run out."""

from __future__ import annotations

import copy
import errno
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

from tornado import httpserver, httputil, ioloop, iostream
from tornado.http1connection import HTTP1ServerConnection

from gateway.settings import Settings

log = logging.getLogger(__name__)

FD_RESERVE = 128  # descriptors kept for all but connections and kernels (engine, Redis, logs)
FD_PER_SESSION = 32  # a kernel's sockets as the gateway holds them (~14 measured) and margin
_FD_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_NOTE_EVERY_S = 10.0  # connection-limit warnings: at most one per this


class Connection(Protocol):
    """A client connection as the server counts it: a tornado stream, or one served off
    tornado's HTTP machinery (a forwarding lane)."""

    def close(self) -> None: ...


def connection_limit(settings: Settings, fd_limit: int) -> int:
    """How many HTTP connections to hold at once: ``max_connections``, and few enough that
    every session's kernel still finds descriptors under ``fd_limit`` (the soft
    RLIMIT_NOFILE). Raises ValueError when the fd limit leaves fewer than 16."""
    room = fd_limit - FD_RESERVE - FD_PER_SESSION * (settings.max_sessions + settings.pool_size)
    if room < 16:
        need = fd_limit - room + 16
        raise ValueError(f"the file descriptor limit ({fd_limit}) is too low for max_sessions="
                         f"{settings.max_sessions} and pool_size={settings.pool_size}: raise "
                         f"`ulimit -n` to {need} or more, or lower them")
    return min(settings.max_connections, room)


class HTTPServer(httpserver.HTTPServer):
    """Tornado's server, with: TCP_NODELAY on every connection (Nagle + delayed ACK cost
    ~40 ms); at most ``max_connections`` connections, a new one at the cap replacing the one
    idle longest (so idle connections, which cost an attacker nothing, cannot lock clients
    out; a connection whose request bytes are already there when it is accepted is not idle);
    the first request's headers bounded by the header timeout, later ones by the keep-alive
    timeout; and an accept loop that pauses when descriptors run out instead of spinning (and
    logging) on a listening socket that stays readable."""

    def initialize(self, *args: Any, max_connections: int = 0,  # type: ignore[override]
                   keepalive_timeout_s: float | None = None, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self._keepalive_params = copy.copy(self.conn_params)
        self._keepalive_params.header_timeout = keepalive_timeout_s
        self._open: set[Connection] = set()
        # connections waiting for a request, the longest waiting first
        self._idle: OrderedDict[Connection, None] = OrderedDict()
        self._noted = {"replaced": 0, "refused": 0, "out of descriptors": 0}
        self._noted_at = 0.0

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and len(self._open) >= self.max_connections:
            if not self._close_idle():
                self._note("refused")
                stream.close()
                return
            self._note("replaced")
        if stream.socket is not None and stream.socket.family in (socket.AF_INET, socket.AF_INET6):
            stream.set_nodelay(True)
        self._open.add(stream)
        if not _has_data(stream):  # a client sends its request at once; a flood sends nothing
            self._idle[stream] = None
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        conn = cast(HTTP1ServerConnection, server_conn)
        if conn.params is not self._keepalive_params:  # the first request
            conn.params = self._keepalive_params  # for the requests after it
        elif conn.stream in self._open:  # waiting for its next request (keep-alive) now
            self._idle[conn.stream] = None
        return _Busy(super().start_request(server_conn, request_conn), self._idle, conn.stream)

    def on_close(self, server_conn: object) -> None:
        stream = cast(HTTP1ServerConnection, server_conn).stream
        self._open.discard(stream)
        self._idle.pop(stream, None)
        super().on_close(server_conn)

    # a connection that left tornado's HTTP machinery (a lane) still counts towards the cap
    def adopt(self, conn: Connection) -> None:
        self._open.add(conn)

    def idle(self, conn: Connection, waiting: bool) -> None:
        """Whether ``conn`` is waiting for a request (idle connections are closed first)."""
        if waiting:
            self._idle[conn] = None
        else:
            self._idle.pop(conn, None)

    def release(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)

    def serve_socket(self, sock: socket.socket) -> None:
        """Serve a connected socket (a lane's, given back) from its next unread byte on."""
        try:
            address = sock.getpeername()
        except OSError:  # (the client has gone)
            sock.close()
            return
        self.handle_stream(iostream.IOStream(sock), address)

    def _close_idle(self) -> bool:
        """Close the connection idle longest; False when every connection is busy."""
        if not self._idle:
            return False
        stream, _ = self._idle.popitem(last=False)
        self._open.discard(stream)
        stream.close()
        return True

    def _note(self, what: str) -> None:
        """Count a refusal; log the counts at most every _NOTE_EVERY_S (floods log little)."""
        self._noted[what] += 1
        now = time.monotonic()
        if now - self._noted_at >= _NOTE_EVERY_S:
            counts = " ".join(f"{k.replace(' ', '_')}={v}" for k, v in self._noted.items() if v)
            log.warning("connection limit reached max_connections=%d open=%d %s",
                        self.max_connections, len(self._open), counts)
            self._noted = dict.fromkeys(self._noted, 0)
            self._noted_at = now

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> Callable[[], None]:
        """tornado.netutil.add_accept_handler, except that out of descriptors it closes the
        connection idle longest and pauses accepting for a moment. Returns the remover."""
        loop = ioloop.IOLoop.current()
        removed = False
        paused: object | None = None

        def accept(fd: Any, events: int) -> None:
            nonlocal paused
            for _ in range(128):
                if removed:
                    return
                try:
                    connection, address = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno not in _FD_EXHAUSTED:
                        raise
                    self._note("out of descriptors")
                    self._close_idle()
                    loop.remove_handler(sock)
                    paused = loop.call_later(0.1, resume)
                    return
                self._handle_connection(connection, address)

        def resume() -> None:
            nonlocal paused
            paused = None
            if not removed:
                loop.add_handler(sock, accept, ioloop.IOLoop.READ)

        def remove() -> None:
            nonlocal removed
            removed = True
            if paused is not None:
                loop.remove_timeout(paused)
            else:
                loop.remove_handler(sock)

        loop.add_handler(sock, accept, ioloop.IOLoop.READ)
        return remove


def _has_data(stream: iostream.IOStream) -> bool:
    try:
        return bool(stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # (BlockingIOError: nothing yet)
        return False


class _Busy(httputil.HTTPMessageDelegate):
    """Passes a request through; once its headers are in, its connection is no longer idle."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate,
                 idle: OrderedDict[Connection, None], stream: iostream.IOStream) -> None:
        self._delegate, self._idle, self._stream = delegate, idle, stream

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self._idle.pop(self._stream, None)
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._delegate.data_received(chunk)

    def finish(self) -> None:
        self._delegate.finish()

    def on_connection_close(self) -> None:
        self._delegate.on_connection_close()


def make_server(app: httputil.HTTPServerConnectionDelegate, settings: Settings,
                max_connections: int) -> HTTPServer:
    # the body limit is enforced per handler (JSON 413); this is the hard ceiling
    return HTTPServer(app, xheaders=False, max_body_size=4 * settings.max_request_bytes,
                      idle_connection_timeout=settings.header_timeout_s,
                      keepalive_timeout_s=settings.keepalive_timeout_s,
                      body_timeout=settings.body_timeout_s, max_connections=max_connections)
