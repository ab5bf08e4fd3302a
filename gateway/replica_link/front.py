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
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Iterable
from http.client import responses
from typing import Any

from tornado import httputil, web

from gateway import errors
from gateway.access import log_access
from gateway.handlers.base import (
    DEFAULT_HEADERS,
    FORWARDED_HEADER,
    RETRY_AFTER_S,
    Services,
    forward_timeout_s,
    forwarded_headers,
)
from gateway.models import SESSION_ID_RE, ErrorBody, ErrorDetail
from gateway.replica_link.client import Answer

log = logging.getLogger(__name__)

_EXECUTE = re.compile(r"/v1/sessions/([^/]+)/execute")


@functools.lru_cache(maxsize=1)
def _date(second: int) -> str:
    """The Date header for ``second`` (made once a second, not once a call)."""
    return httputil.format_timestamp(second)


class Front(httputil.HTTPServerConnectionDelegate):
    """The HTTP server's delegate: the application, with the forwarding hot path before it."""

    def __init__(self, app: web.Application, services: Services) -> None:
        self.app = app
        self.services = services
        self.calls: set[asyncio.Future[Any]] = set()  # tasks of calls not answered yet

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        return _Call(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _Call(httputil.HTTPMessageDelegate):
    """One request: forwarded here, or passed to the application as it arrives."""

    def __init__(self, front: Front, server_conn: object,
                 request_conn: httputil.HTTPConnection) -> None:
        self.front, self.server_conn, self.request_conn = front, server_conn, request_conn
        self.app_delegate: httputil.HTTPMessageDelegate | None = None
        self.place = ""  # where the call goes (the hot path), once the headers said so
        self.owner = self.session_id = ""
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
        if not self._take():
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
            self._send()

    def on_connection_close(self) -> None:
        self.closed = True
        if self.app_delegate is not None:
            self.app_delegate.on_connection_close()

    # ------------------------------------------------------------------ the hot path
    def _take(self) -> bool:
        """Whether this request is forwarded here (see the module)."""
        assert self.start_line is not None
        headers, services = self.headers, self.front.services
        if self.start_line.method != "POST" or "Origin" in headers \
                or "Transfer-Encoding" in headers or "Expect" in headers:
            return False
        match = _EXECUTE.fullmatch(self.start_line.path)
        length = headers.get("Content-Length", "")
        if match is None or not SESSION_ID_RE.match(match.group(1)) or not length.isdigit() \
                or int(length) > services.settings.max_request_bytes:
            return False
        if FORWARDED_HEADER in headers:
            return False
        try:
            owner = services.auth.authenticate(headers.get("Authorization"), None,
                                               headers.get("X-API-Key"))
        except errors.Unauthorized:
            return False
        place = services.manager.remembered_place(owner, match.group(1))
        if place is None:
            return False
        self.place, self.owner, self.session_id = place, owner, match.group(1)
        return True

    def _send(self) -> None:
        """The call onto the link at once (when it is open; else once it is), answered by
        ``_answered``."""
        assert self.start_line is not None
        services, settings = self.front.services, self.front.services.settings
        call = (self.place, "POST", self.start_line.path, forwarded_headers(settings, self.headers),
                b"".join(self.chunks), forward_timeout_s(settings))
        answered: asyncio.Future[Answer] | None
        try:
            answered = services.replicas.send(*call)
        except errors.Misdirected as exc:  # (the link is closing)
            answered = asyncio.get_running_loop().create_future()
            answered.set_exception(exc)
        if answered is None:
            answered = asyncio.ensure_future(services.replicas.fetch(*call))
            self._track(answered)
        answered.add_done_callback(self._answered)

    def _answered(self, answered: asyncio.Future[Answer]) -> None:
        services = self.front.services
        forwarded = services.metrics.forwarded
        try:
            answer = answered.result()
            if answer.code == errors.Misdirected.status:
                raise errors.Misdirected("the replica no longer serves the session")
        except errors.Misdirected:
            forwarded.labels("misdirected").inc()
            services.manager.forget_location(self.owner, self.session_id)
            self._track(asyncio.ensure_future(self._replay()))
        except errors.OwnerDown:
            forwarded.labels("down").inc()
            services.manager.mark_down(self.place)
            self._track(asyncio.ensure_future(self._replay()))
        except errors.OwnerUnreachable as exc:
            forwarded.labels("unreachable").inc()
            body = ErrorBody(error=ErrorDetail(code=exc.code, message=exc.message))
            self._answer(exc.status, [("Retry-After", str(RETRY_AFTER_S))],
                         body.model_dump_json().encode())
        except Exception:  # a bug: answered (as the handlers would), never left hanging
            log.exception("forwarding %s failed", self.start_line)
            body = ErrorBody(error=ErrorDetail(code="internal_error", message="internal error"))
            self._answer(500, [], body.model_dump_json().encode())
        else:
            forwarded.labels("answered").inc()
            self._answer(answer.code, answer.headers.get_all(), answer.body)

    def _track(self, task: asyncio.Future[Any]) -> None:
        """Keep a task of this call's alive until it is done."""
        self.front.calls.add(task)
        task.add_done_callback(self.front.calls.discard)

    def _answer(self, code: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        if self.closed or self.request_conn is None:
            return
        out = httputil.HTTPHeaders()
        for name, value in DEFAULT_HEADERS:
            out[name] = value
        for name, value in headers:
            out[name] = value
        out["Date"] = _date(int(time.time()))
        if code == 204:
            del out["Content-Type"]
            body = b""
        else:
            out["Content-Length"] = str(len(body))
        reason = responses.get(code, "Unknown")
        self.request_conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", code, reason),
                                        out, body)
        self.request_conn.finish()
        assert self.start_line is not None
        log_access(code, self.start_line.method, self.start_line.path,
                   time.monotonic() - self.started)

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
