"""Lane: a client's keep-alive connection after a forwarded execute, served by the front
itself instead of tornado's HTTP server.

Most of what a forwarder spends on a call is tornado's HTTP machinery around it (a coroutine,
futures and timeouts per request, the stream's buffers, header objects: about half its CPU
per call, see README Performance). A client that made one forwarded execute on a keep-alive
connection most likely makes more, so once it is answered the front takes the socket from
tornado (as a WebSocket upgrade does) and serves it as a lane:

- each time the socket is readable the lane *peeks* at what arrived, without taking it;
- a whole request the hot path takes (``Front.hot``, over HTTP/1.1, not asking to close) goes
  onto the replica link; its bytes are taken from the socket once it is answered, and the
  answer is written with one send;
- anything else (another request, one the hot path does not take, bytes that are no request,
  a request larger than ``PEEK_BYTES``, a call the owner did not take because the session moved
  or the owner is down) and the socket goes back to tornado's HTTP server with those bytes
  still unread: tornado sees the request exactly as the client sent it.

A request whose head is there but not all its body waits for the rest (the socket's receive
low-water mark is raised to the request's size, so the loop is not woken for less) up to the
body timeout. A lane waiting for a request is closed after the keep-alive timeout. It counts
as one of the server's connections (an idle one: a new connection at the cap may replace it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import time
from typing import TYPE_CHECKING

from tornado import httputil

from gateway.access import log_access
from gateway.replica_link import replies

if TYPE_CHECKING:
    from gateway.replica_link.client import Answer
    from gateway.replica_link.front import Front, Hot
    from gateway.server import HTTPServer

log = logging.getLogger(__name__)

PEEK_BYTES = 64 * 1024  # a larger request goes back to tornado


def lane_able(start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders) -> bool:
    """Whether a request may be answered on a lane (and its connection become one)."""
    return start_line.version == "HTTP/1.1" \
        and "close" not in headers.get("Connection", "").lower()


# The heads the lane reads itself: RFC 9112's strict form only (a request line, then
# ``name: value`` fields of visible ASCII, each ending CRLF, no name twice). Anything else (a
# folded or repeated field, a bare LF, other bytes, another version) is left to tornado, read
# from the socket as it came: where two parsers could disagree on a request, the lane does not
# decide. (Also a few times quicker than tornado's general parser: this is every lane call;
# possessive, so linear in the head whatever its bytes.)
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]++"
_START = re.compile(rb"(" + _TOKEN + rb") (/[\x21-\x7e]*+) HTTP/1\.1\r\n")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*+([\x21-\x7e \t]*+)\r\n")


def _request_in(data: bytes) -> tuple[httputil.RequestStartLine, httputil.HTTPHeaders, int
                                      ] | None:
    """The request whose head starts ``data``: its start line, headers and the head's
    length; None when the head is not all there or not in the strict form above."""
    end = data.find(b"\r\n\r\n") + 2
    start = _START.match(data, 0, end) if end > 1 else None
    if start is None:
        return None
    headers, at = httputil.HTTPHeaders(), start.end()
    while at < end:
        field = _FIELD.match(data, at, end)
        if field is None:
            return None
        name = field.group(1).decode()
        if name in headers:  # (names compare as tornado's do, whatever their case)
            return None
        headers[name] = field.group(2).rstrip(b" \t").decode()
        at = field.end()
    return (httputil.RequestStartLine(start.group(1).decode(), start.group(2).decode(),
                                      "HTTP/1.1"), headers, end + 2)


class Lane:
    """One connection served as a lane (see the module)."""

    def __init__(self, front: Front, server: HTTPServer, sock: socket.socket) -> None:
        self.front, self.server, self.sock = front, server, sock
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.timer: asyncio.TimerHandle | None = None
        self.low_water = 1  # the receive low-water mark: a partial request's size, else 1
        self.reading = False  # whether the loop watches the socket
        self.closed = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (tornado unsets it)
        self.server.adopt(self)
        self.front.lanes.add(self)
        self._listen()

    # ------------------------------------------------------------------ reading
    def _listen(self) -> None:
        """Wait for the next request."""
        if not self.reading:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True
        self._arm(self.front.services.settings.keepalive_timeout_s)
        self.server.idle(self, True)

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self.close)

    def _readable(self) -> None:
        try:
            self._read()
        except Exception:  # a bug: the lane closes (a reader left on would spin)
            log.exception("a forwarding lane failed")
            self.close()

    def _read(self) -> None:
        try:
            data = self.sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:  # the client closed its side
            self.close()
            return
        request = _request_in(data)
        hot = None
        if request is not None and lane_able(request[0], request[1]):
            hot = self.front.hot(request[0], request[1])
        if request is None or hot is None:
            self._give_back()
            return
        start_line, headers, head = request
        size = head + int(headers["Content-Length"])  # (hot: digits, within the body limit)
        if size > PEEK_BYTES:
            self._give_back()
            return
        if len(data) < size:  # the body is on its way: wake up once it is all here
            if self.low_water == size:  # woken with less: the client closed, or the kernel
                self._give_back()       # does not keep the mark; tornado reads it
            else:
                self._low_water(size)
                self._arm(self.front.services.settings.body_timeout_s)
            return
        # onto the link first (the owner starts on it while this lane does its bookkeeping;
        # the answer never comes back within this call)
        self.front.forward(hot, start_line.path, headers, data[head:size], functools.partial(
            self._answered, hot, start_line, size, time.monotonic()))
        if self.low_water != 1:
            self._low_water(1)
        self._unwatch()  # (its bytes stay there, unread, until it is answered)
        self._disarm()
        self.server.idle(self, False)

    def _low_water(self, size: int) -> None:
        self.low_water = size
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)

    def _unwatch(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # ------------------------------------------------------------------ answering
    def _answered(self, hot: Hot, start_line: httputil.RequestStartLine, size: int,
                  started: float, answered: asyncio.Future[Answer]) -> None:
        try:
            self._answer(hot, start_line, size, started, answered)
        except Exception:  # a bug: the lane closes (not left waiting for nothing)
            log.exception("a forwarding lane failed")
            self.close()

    def _answer(self, hot: Hot, start_line: httputil.RequestStartLine, size: int,
                started: float, answered: asyncio.Future[Answer]) -> None:
        reply = self.front.settle(hot, answered)
        if self.closed or reply is None:
            self.front.count(answered)
            if not self.closed:  # nothing ran: tornado serves the request, still unread
                self._give_back()
            return
        try:
            response = replies.encode(*reply)
        except ValueError:  # a bug (the owner's headers): answered, never left hanging
            log.exception("forwarding to %s failed", hot.place)
            response = replies.encode(*replies.INTERNAL_ERROR)
        try:
            try:
                sent = self.sock.send(response)  # (the bookkeeping: after the client has it)
            finally:
                self.front.count(answered)  # the owner answered, the client there or not
            self._take(size)
        except OSError:  # the client went away
            self.close()
            return
        log_access(reply[0], start_line.method, start_line.path, time.monotonic() - started)
        if sent == len(response):
            self._listen()
        else:  # (a large answer: the rest as the client reads it)
            self.front.track(asyncio.ensure_future(self._send_rest(response[sent:])))

    def _take(self, size: int) -> None:
        """Take the answered request's bytes from the socket (they are there: peeked)."""
        while size > 0:
            chunk = self.sock.recv(size)
            if not chunk:
                raise ConnectionResetError("the client closed")
            size -= len(chunk)

    async def _send_rest(self, rest: bytes) -> None:
        try:
            async with asyncio.timeout(self.front.services.settings.keepalive_timeout_s):
                await self.loop.sock_sendall(self.sock, rest)
        except (OSError, TimeoutError):
            self.close()
            return
        if not self.closed:
            self._listen()

    # ------------------------------------------------------------------ leaving
    def _release(self) -> None:
        self._unwatch()
        self._disarm()
        self.server.release(self)
        self.front.lanes.discard(self)

    def _give_back(self) -> None:
        """The socket back to tornado's HTTP server, whatever is waiting on it unread."""
        self._release()
        self.closed = True
        if self.low_water != 1:
            try:
                self._low_water(1)
            except OSError:
                pass
        self.server.serve_socket(self.sock)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()
            self.sock.close()
