"""The serving side of replica links: calls another replica forwards here, run by the app.

A link begins as ``GET /v1/replica-link`` with ``Upgrade: exec-gateway-link/1`` and a valid
API key (any key: each call on it is authenticated again with its own client's key). After
``101`` the socket leaves tornado's HTTP server for an asyncio protocol; each request frame
becomes an ``HTTPServerRequest`` that the application routes and its handler serves exactly
as if it had come over HTTP (auth, limits, errors), and its answer goes back as one frame.
What is saved is the owner's HTTP parsing and socket work per call — most of what a forward
used to add (see README, Performance).

Bounds: ``MAX_LINKS`` links at once (a new one closes the link quiet longest); ``MAX_IN_FLIGHT``
calls per link (more are answered ``503`` at once); a frame over the request ceiling closes
the link; when the peer stops reading, the link stops reading too; TCP keepalive notices a
peer that vanished. On ``stop`` each link says ``goaway`` (calls it has not
seen go elsewhere) and closes once its calls are answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from tornado import httputil, iostream

from gateway.models import ErrorBody, ErrorDetail
from gateway.replica_link import frames

log = logging.getLogger(__name__)

MAX_LINKS = 64
MAX_IN_FLIGHT = 256
RELAYED_HEADERS = ("Content-Type", "Location", "Retry-After")
LINK_HOST = "replica-link"  # the Host of calls that came without one


def _error(status: int, code: str, message: str) -> tuple[dict[str, Any], bytes]:
    """The head and body of an answer the link gives itself (the handlers' error JSON)."""
    head = {"code": status, "headers": [("Content-Type", "application/json"),
                                        ("Retry-After", "1")]}
    return head, ErrorBody(error=ErrorDetail(code=code, message=message)).model_dump_json(
        ).encode()


@dataclass(frozen=True)
class _Context:
    """What ``HTTPServerRequest`` reads from its connection's context."""

    remote_ip: str
    protocol: str = "http"


class _Exchange(httputil.HTTPConnection):
    """One call's side of the link, as tornado's ``HTTPConnection``: the handler writes its
    answer here and ``finish`` sends it as one frame."""

    via_link = True  # (a call that is not served here is then answered 421, see handlers)

    def __init__(self, link: ServedLink, call: int) -> None:
        self.link, self.call, self.context = link, call, link.context
        self.code = 200
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.on_close: Callable[[], None] | None = None

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.on_close = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        """(The link bounds frames itself.)"""

    def write_headers(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                      headers: httputil.HTTPHeaders, chunk: bytes | None = None
                      ) -> asyncio.Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self.code = start_line.code
        self.headers = [(n, headers[n]) for n in RELAYED_HEADERS if n in headers]
        return self.write(chunk or b"")

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        if chunk:
            self.chunks.append(chunk)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def finish(self) -> None:
        self.link.answer(self, {"code": self.code, "headers": self.headers},
                         b"".join(self.chunks))


class ServedLink(asyncio.Protocol):
    def __init__(self, links: ServedLinks, peer: str) -> None:
        self.links = links
        self.context = _Context(peer)
        self.transport: asyncio.Transport | None = None
        self.decoder = frames.Decoder(links.max_frame_bytes)
        self.calls: dict[int, _Exchange] = {}
        self.last_seen = 0
        self.active_at = time.monotonic()  # when a call last came
        self.going_away = False
        self._tasks: set[asyncio.Future[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.going_away:
            return  # (calls after the goaway: the peer sends them elsewhere)
        self.active_at = time.monotonic()
        try:
            for frame in self.decoder.feed(data):
                self._take(frame)
        except frames.FrameError as exc:
            log.warning("replica link from %s closed: %s", self.context.remote_ip, exc)
            self.close()

    def _take(self, frame: frames.Frame) -> None:
        if frame.call <= self.last_seen:
            raise frames.FrameError(f"call {frame.call} after {self.last_seen}")
        self.last_seen = frame.call
        method, uri = frame.head.get("method"), frame.head.get("uri")
        if not isinstance(method, str) or not isinstance(uri, str) or not uri.startswith("/"):
            raise frames.FrameError("request frame without method and path")
        headers = frames.headers_of(frame.head)
        if len(self.calls) >= MAX_IN_FLIGHT:
            self._send(frame.call, *_error(503, "unavailable", "too many calls on this link"))
            return
        exchange = self.calls[frame.call] = _Exchange(self, frame.call)
        self._serve(exchange, method, uri, headers, frame.body)

    def _serve(self, exchange: _Exchange, method: str, uri: str,
               headers: httputil.HTTPHeaders, body: bytes) -> None:
        """Drive the application as tornado's HTTP1Connection does (at once: a task only
        when the handler makes the call wait between its steps)."""
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Host", LINK_HOST)
        delegate = self.links.app.start_request(self, exchange)
        start_line = httputil.RequestStartLine(method, uri, "HTTP/1.1")
        steps: list[Callable[[], Awaitable[None] | None]] = [
            functools.partial(delegate.headers_received, start_line, headers)]
        if body:
            steps.append(functools.partial(delegate.data_received, body))
        steps.append(delegate.finish)
        self._step(exchange, iter(steps))

    def _step(self, exchange: _Exchange,
              steps: Iterator[Callable[[], Awaitable[None] | None]]) -> None:
        try:
            for step in steps:
                waiting = step()
                if waiting is not None:
                    task = asyncio.ensure_future(self._step_after(exchange, waiting, steps))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    return
        except Exception:  # a handler's own errors are answered by it; this is a bug
            self._failed(exchange)

    async def _step_after(self, exchange: _Exchange, waiting: Awaitable[None],
                          steps: Iterator[Callable[[], Awaitable[None] | None]]) -> None:
        try:
            await waiting
        except Exception:
            self._failed(exchange)
            return
        self._step(exchange, steps)

    def _failed(self, exchange: _Exchange) -> None:
        log.exception("replica link call failed")
        if exchange.call in self.calls:
            self.answer(exchange, *_error(500, "internal_error", "the call failed"))

    def answer(self, exchange: _Exchange, head: dict[str, Any], body: bytes) -> None:
        if self.calls.pop(exchange.call, None) is None:
            return
        self._send(exchange.call, head, body)
        if self.going_away and not self.calls:
            self.close()

    def _send(self, call: int, head: dict[str, Any], body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames.encode(call, head, body))

    def pause_writing(self) -> None:  # the peer stopped reading: stop taking calls from it
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def go_away(self) -> None:
        """Take no more calls; close once those taken are answered."""
        if not self.going_away:
            self.going_away = True
            self._send(frames.CONTROL, {"goaway": self.last_seen}, b"")
        if not self.calls:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.links.served.discard(self)
        self.links.gauge.set(len(self.links.served))
        calls, self.calls = self.calls, {}
        for exchange in calls.values():  # their handlers hear the client went away
            if exchange.on_close is not None:
                exchange.on_close()


class ServedLinks:
    """The links other replicas opened to this one."""

    def __init__(self, max_frame_bytes: int, gauge: Gauge) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.served: set[ServedLink] = set()
        self.gauge = gauge
        self.app: Any = None  # the tornado Application (set by make_app)
        self.stopping = False

    def room(self) -> bool:
        """Whether a new link may be served: when ``MAX_LINKS`` are open, the one quiet
        longest is closed for it (links that hold the room without calls cannot lock the
        replicas out)."""
        if self.stopping:
            return False
        if len(self.served) >= MAX_LINKS:
            min(self.served, key=lambda link: link.active_at).close()
        return True

    async def adopt(self, stream: iostream.IOStream, peer: str) -> None:
        """Serve the link on ``stream`` (its HTTP upgrade answered and flushed)."""
        if stream.closed() or stream.socket is None:
            return  # (the peer left right after its upgrade)
        sock = stream.socket.dup()  # the stream's own socket closes with it
        stream.close()
        try:
            frames.keep_alive(sock)
            _, link = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: ServedLink(self, peer), sock)
        except OSError as exc:
            sock.close()
            log.info("replica link from %s not served: %s", peer, exc)
            return
        self.served.add(link)
        self.gauge.set(len(self.served))

    def stop(self) -> None:
        """Every link: goaway, then close once its calls are answered."""
        self.stopping = True
        for link in list(self.served):
            link.go_away()

    def close(self) -> None:
        for link in list(self.served):
            link.close()
