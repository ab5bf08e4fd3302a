"""ReplicaClient: keep-alive HTTP/1.1 connections to the other replicas, for forwarded REST
calls.

Tornado's AsyncHTTPClient (``SimpleAsyncHTTPClient``) opens a TCP connection per call: a
forwarded call then pays a connect, a fresh server-side connection at the owner and cold
buffers every time. Here each replica keeps up to ``max_idle`` idle connections, each reused
for at most ``idle_s`` (less than the owner's keep-alive timeout, so the owner does not close
it first); one that the owner closed anyway is noticed before reuse (a close callback while
idle, and a non-blocking peek when taken, as urllib3 does). A call has one deadline; a
connection whose call failed or whose answer was not cleanly framed is closed, never reused.
Answers are read whole (forwarded REST answers are JSON, bounded at the owner) up to
``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.tcpclient import TCPClient

from gateway import errors

CONNECT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 128 * 1024 * 1024
_PARAMS = HTTP1ConnectionParameters(max_body_size=MAX_ANSWER_BYTES, decompress=False)
Replica = tuple[str, int]  # (host, port)


@dataclass
class Answer:
    code: int = 0
    headers: httputil.HTTPHeaders = field(default_factory=httputil.HTTPHeaders)
    body: bytes = b""
    keep_alive: bool = False  # the owner lets the connection serve another call


class _Reader(httputil.HTTPMessageDelegate):
    def __init__(self) -> None:
        self.answer = Answer()
        self._chunks: list[bytes] = []
        self.finished = False

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.answer.code, self.answer.headers = start_line.code, headers
        framed = "Content-Length" in headers or "chunked" in headers.get(
            "Transfer-Encoding", "").lower() or start_line.code in (204, 304)
        self.answer.keep_alive = framed and start_line.version == "HTTP/1.1" and \
            "close" not in headers.get("Connection", "").lower()

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def finish(self) -> None:
        self.answer.body = b"".join(self._chunks)
        self.finished = True

    def on_connection_close(self) -> None:
        self.answer.keep_alive = False


def _dropped(stream: iostream.IOStream) -> bool:
    """Whether an idle connection was closed by its peer (or holds unasked-for bytes)."""
    if stream.closed() or stream.socket is None:
        return True
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return True  # b"": closed by the peer; bytes: an answer nobody asked for
    except BlockingIOError:
        return False  # nothing to read: still open
    except OSError:
        return True


class ReplicaClient:
    def __init__(self, idle_s: float, max_idle: int = 8) -> None:
        self.idle_s = idle_s
        self.max_idle = max_idle  # idle connections kept per replica
        self._idle: dict[Replica, collections.deque[tuple[iostream.IOStream, float]]] = {}
        self._tcp = TCPClient()

    async def fetch(self, base_url: str, method: str, uri: str, headers: dict[str, str],
                    body: bytes | None, timeout_s: float) -> Answer:
        """Send one call to the replica at ``base_url`` and read its whole answer, within
        ``timeout_s``. Raises OwnerDown (the connection was refused: it never saw the
        call, safe to try elsewhere), OwnerUnreachable (anything else: it may have run)."""
        url = urllib.parse.urlsplit(base_url)
        replica = (url.hostname or "127.0.0.1", url.port or 80)
        head = httputil.HTTPHeaders({**headers, "Host": url.netloc})
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head["Content-Length"] = str(len(body or b""))
        stream: iostream.IOStream | None = None
        try:
            async with asyncio.timeout(timeout_s):
                stream = self._take(replica) or await self._connect(replica)
                conn = HTTP1Connection(stream, True, _PARAMS)
                sent = conn.write_headers(httputil.RequestStartLine(method, uri, "HTTP/1.1"),
                                          head, body or None)
                sent.add_done_callback(lambda f: f.cancelled() or f.exception())
                conn.finish()
                reader = _Reader()
                await conn.read_response(reader)
        except (iostream.StreamClosedError, httputil.HTTPInputError, OSError,
                TimeoutError) as exc:
            if stream is not None:
                stream.close()
            raise errors.OwnerUnreachable(
                f"the gateway that owns this session cannot be reached: {exc!r}") from exc
        except BaseException:  # cancelled: the connection is mid-call, never reusable
            if stream is not None:
                stream.close()
            raise
        if not reader.finished:
            stream.close()
            raise errors.OwnerUnreachable("the gateway that owns this session did not answer")
        self._give_back(replica, stream, reader.answer.keep_alive)
        return reader.answer

    async def _connect(self, replica: Replica) -> iostream.IOStream:
        try:
            stream = await asyncio.wait_for(self._tcp.connect(*replica), CONNECT_TIMEOUT_S)
        except (ConnectionRefusedError, iostream.StreamClosedError) as exc:
            if isinstance(exc, ConnectionRefusedError) or isinstance(
                    getattr(exc, "real_error", None), ConnectionRefusedError):
                raise errors.OwnerDown("the gateway that owns this session is down") from exc
            raise
        stream.set_nodelay(True)
        return stream

    def _take(self, replica: Replica) -> iostream.IOStream | None:
        """The most recently used idle connection still usable, or None."""
        idle = self._idle.get(replica)
        now = time.monotonic()
        while idle:
            stream, since = idle.pop()
            stream.set_close_callback(None)
            if now - since < self.idle_s and not _dropped(stream):
                return stream
            stream.close()
        return None

    def _give_back(self, replica: Replica, stream: iostream.IOStream, keep: bool) -> None:
        idle = self._idle.setdefault(replica, collections.deque())
        if not keep or stream.closed() or len(idle) >= self.max_idle:
            stream.close()
            return
        entry = (stream, time.monotonic())
        idle.append(entry)

        def closed() -> None:  # the owner closed it while idle
            if entry in idle:
                idle.remove(entry)

        stream.set_close_callback(closed)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            while idle:
                stream, _ = idle.pop()
                stream.set_close_callback(None)
                stream.close()
        self._idle.clear()
