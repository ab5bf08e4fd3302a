"""Front: the forwarding hot path — a REST execute for a session that another replica is
known to serve goes straight from the HTTP parser onto the replica link.

The application would do the same, through a ``RequestHandler`` (routing, prepare, the body
parsed and checked, the handler's coroutine, ``finish``): on a forwarder that machinery costs
more than the call's whole journey on the link. Here only what forwarding needs is done: the
key (to find the remembered place, which is per key), the size bound, and the call sent as it
came. The owner does everything else — auth again, the body checked, limits, the error JSON —
exactly as for a call made to it directly.

Everything else goes to the application, untouched: any other path or method, a call with an
``Origin`` (CORS answers are the handlers'), without a ``Content-Length`` or over the body
limit, without a valid key, for a session served here or whose place is not remembered (the
registry is asked by the handler, which then remembers it). When the owner did not take the
call (it refused the link, is stopping, or no longer serves the session), the request is given
to the application as if it had just arrived (nothing ran); when the call may have run there,
the client is told ``503 owner_unreachable`` (never replayed).

A keep-alive connection whose call went this way then leaves tornado for a ``Lane`` (see
``lane.py``): its next forwarded calls skip tornado's HTTP machinery too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from http.client import responses
from typing import TYPE_CHECKING, Any

from tornado import httputil, web
from tornado.http1connection import HTTP1Connection

from gateway import errors
from gateway.access import log_access
from gateway.handlers.base import (
    FORWARDED_HEADER,
    RETRY_AFTER_S,
    Services,
    forward_outcome,
    forward_timeout_s,
    forwarded_headers,
)
from gateway.models import SESSION_ID_RE
from gateway.replica_link import replies
from gateway.replica_link.client import Answer, Then
from gateway.replica_link.lane import Lane, lane_able

if TYPE_CHECKING:
    from gateway.server import HTTPServer

log = logging.getLogger(__name__)

_EXECUTE = re.compile(r"/v1/sessions/([^/]+)/execute")


@dataclass(frozen=True)
class Hot:
    """A request the hot path takes: the replica it goes to, and whose session it is."""

    place: str
    owner: str
    session_id: str


def hot_call(services: Services, start_line: httputil.RequestStartLine,
             headers: httputil.HTTPHeaders) -> Hot | None:
    """Where this request is forwarded on the hot path; None when it goes to the application
    (see the module)."""
    if start_line.method != "POST" or "Origin" in headers \
            or "Transfer-Encoding" in headers or "Expect" in headers:
        return None
    match = _EXECUTE.fullmatch(start_line.path)
    length = headers.get("Content-Length", "")
    if match is None or not SESSION_ID_RE.match(match.group(1)) or not length.isdigit() \
            or int(length) > services.settings.max_request_bytes:
        return None
    if FORWARDED_HEADER in headers:
        return None
    try:
        owner = services.auth.authenticate(headers.get("Authorization"), None,
                                           headers.get("X-API-Key"))
    except errors.Unauthorized:
        return None
    place = services.manager.remembered_place(owner, match.group(1))
    return None if place is None else Hot(place, owner, match.group(1))


class Front(httputil.HTTPServerConnectionDelegate):
    """The HTTP server's delegate: the application, with the forwarding hot path before it.
    Once ``server`` is set to the server it serves for, its keep-alive connections may become
    lanes."""

    def __init__(self, app: web.Application, services: Services) -> None:
        self.app = app
        self.services = services
        self.server: HTTPServer | None = None
        self.calls: set[asyncio.Future[Any]] = set()  # tasks of calls not answered yet
        self.lanes: set[Lane] = set()
        self._counters: dict[str, Any] = {}  # the forwarded-calls counter of each outcome

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        return _Call(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def hot(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders
            ) -> Hot | None:
        return hot_call(self.services, start_line, headers)

    def forward(self, hot: Hot, path: str, headers: httputil.HTTPHeaders, body: bytes,
                then: Then) -> None:
        """The call onto the link at once (when it is open; else once it is); its answer to
        ``then``."""
        settings = self.services.settings
        call = (hot.place, "POST", path, forwarded_headers(settings, headers), body,
                forward_timeout_s(settings))
        answered: asyncio.Future[Answer] | None
        try:
            answered = self.services.replicas.send(*call, then=then)
        except errors.Misdirected as exc:  # (the link is closing)
            answered = asyncio.get_running_loop().create_future()
            answered.set_exception(exc)
            answered.add_done_callback(then)
        if answered is None:
            answered = asyncio.ensure_future(self.services.replicas.fetch(*call))
            answered.add_done_callback(then)
            self.track(answered)

    def settle(self, hot: Hot, answered: asyncio.Future[Answer]) -> replies.Reply | None:
        """What the client is answered; None when the owner did not take the call (nothing
        ran: the request goes to the application as it came). Counted by ``count``."""
        services = self.services
        failure = answered.exception()
        if isinstance(failure, errors.Misdirected):
            services.manager.forget_location(hot.owner, hot.session_id)
            return None
        if isinstance(failure, errors.OwnerDown):
            services.manager.mark_down(hot.place)
            return None
        if isinstance(failure, errors.OwnerUnreachable):
            return replies.error(failure.status, failure.code, failure.message,
                                 [("Retry-After", str(RETRY_AFTER_S))])
        if failure is not None:  # a bug: answered (as the handlers would), never left hanging
            log.error("forwarding to %s failed", hot.place, exc_info=failure)
            return replies.INTERNAL_ERROR
        answer = answered.result()
        return answer.code, answer.headers, answer.body

    def count(self, answered: asyncio.Future[Answer]) -> None:
        """The forwarded call's outcome in the metrics (once its client has its answer)."""
        outcome = forward_outcome(answered.exception())
        counter = self._counters.get(outcome)
        if counter is None:
            counter = self._counters[outcome] = self.services.metrics.forwarded.labels(outcome)
        counter.inc()

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a task of a call's alive until it is done."""
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)


class _Call(httputil.HTTPMessageDelegate):
    """One request: forwarded here, or passed to the application as it arrives."""

    def __init__(self, front: Front, server_conn: object,
                 request_conn: httputil.HTTPConnection) -> None:
        self.front, self.server_conn, self.request_conn = front, server_conn, request_conn
        self.app_delegate: httputil.HTTPMessageDelegate | None = None
        self.hot: Hot | None = None  # where the call goes (the hot path), once the headers said
        self.start_line: httputil.RequestStartLine | None = None
        self.headers = httputil.HTTPHeaders()
        self.chunks: list[bytes] = []
        self.closed = False
        self.started = time.monotonic()

    # ------------------------------------------------------------------ HTTPMessageDelegate
    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.start_line, self.headers = start_line, headers
        self.hot = self.front.hot(start_line, headers)
        if self.hot is None:
            return self._to_app().headers_received(start_line, headers)
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.app_delegate is not None:
            return self.app_delegate.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.app_delegate is not None:
            self.app_delegate.finish()
        else:
            assert self.hot is not None and self.start_line is not None
            self.front.forward(self.hot, self.start_line.path, self.headers,
                               b"".join(self.chunks), self._answered)

    def on_connection_close(self) -> None:
        self.closed = True
        if self.app_delegate is not None:
            self.app_delegate.on_connection_close()

    # ------------------------------------------------------------------ the hot path
    def _answered(self, answered: asyncio.Future[Answer]) -> None:
        assert self.hot is not None
        reply = self.front.settle(self.hot, answered)
        self.front.count(answered)
        if reply is None:
            self.front.track(asyncio.ensure_future(self._replay()))
        else:
            self._answer(*reply)

    def _answer(self, code: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        if self.closed or self.request_conn is None:
            return
        assert self.start_line is not None
        lines, body = replies.head(code, headers, body)
        out = httputil.HTTPHeaders()
        for name, value in lines:
            out[name] = value
        reason = responses.get(code, "Unknown")
        self.request_conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", code, reason),
                                        out, body)
        self.request_conn.finish()
        log_access(code, self.start_line.method, self.start_line.path,
                   time.monotonic() - self.started)
        self._to_lane()

    def _to_lane(self) -> None:
        """This keep-alive connection leaves tornado for a lane (see lane.py), unless tornado
        has already read bytes of its next request (or it is closing, or still writing)."""
        server, conn = self.front.server, self.request_conn
        assert self.start_line is not None
        if server is None or not isinstance(conn, HTTP1Connection) \
                or not lane_able(self.start_line, self.headers):
            return
        stream = conn.stream
        if stream is None or stream.closed() or stream.writing() or stream.socket is None \
                or getattr(stream, "_read_buffer_size", 1) != 0:
            return
        sock = stream.socket.dup()  # the stream's own socket closes with it
        conn.detach()
        stream.close()
        Lane(self.front, server, sock).start()

    async def _replay(self) -> None:
        """Give the request to the application as if it had just arrived (nothing ran)."""
        assert self.start_line is not None
        app = self._to_app()
        for step in (app.headers_received(self.start_line, self.headers),
                     app.data_received(b"".join(self.chunks))):
            if step is not None:
                await step
        app.finish()

    def _to_app(self) -> httputil.HTTPMessageDelegate:
        self.app_delegate = self.front.app.start_request(self.server_conn, self.request_conn)
        return self.app_delegate
