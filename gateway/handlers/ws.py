"""WebSocket v1 (/v1/sessions/{id}/ws): live output of every run in a session, input(), interrupt.

Every watcher of a session gets every event of the session, whoever started the run. Each
client has a bounded queue: when it is full, consecutive output of one stream is folded into
one event (nothing is lost), and anything else is dropped — the client is told how many, and
which seqs, with a ``dropped`` event — instead of growing the gateway. Runs continue when
their client goes away; ``?since=<seq>`` replays what a reconnecting client missed.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import secrets
import urllib.parse
from typing import Any

import pydantic
from tornado import web, websocket

from gateway import errors
from gateway.events import CLOSE_SESSION_GONE, Event, close_for
from gateway.handlers.base import GatewayHandler, Services, validation_error
from gateway.handlers.relay import Relay
from gateway.models import (
    ExecuteRequest,
    SessionState,
    WsClientMessage,
    WsExecute,
    WsInputReply,
)
from gateway.sessions import Session

log = logging.getLogger(__name__)



class SessionSocket(GatewayHandler, websocket.WebSocketHandler):
    session: Session

    def initialize(self, services: Services) -> None:
        super().initialize(services)
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._since: int | None = None
        self._limit = 0
        self._relay: Relay | None = None  # set when another replica owns the session
        self._gone = False  # the client left (on_close ran), maybe before the upgrade

    async def prepare(self) -> None:
        # Everything that can fail does so here, before the upgrade, as a JSON HTTP error.
        refuse_foreign_origin(self)
        self.authenticate()
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            # before attach(): a plain GET must not start a kernel
            raise errors.BadRequest("this endpoint speaks WebSocket only (Upgrade: websocket)")
        since = self.get_query_argument("since", None)
        if since is not None:
            if not (since.isascii() and since.isdigit() and len(since) <= 18):
                raise errors.ValidationFailed("since must be a non-negative integer")
            self._since = int(since)
        session_id = self.path_kwargs["session_id"]

        async def attach(session: Session) -> None:
            self.session = session

        async def relay(url: str) -> None:
            self._relay = await Relay.open(self, self.services.settings, url)
            if self._gone:  # it left while the owner was being reached: nothing to relay
                self._relay.close()

        await self.serve_or_forward(session_id, attach, relay, open_if_absent=True)

    def check_origin(self, origin: str) -> bool:
        return self.origin_allowed(origin) or bool(super().check_origin(origin))

    def get_compression_options(self) -> None:
        return None

    def open(self, session_id: str) -> None:  # type: ignore[override]
        if self._relay is not None:
            self._relay.start()
            return
        # tornado turns TCP_NODELAY off after the 101 answer: small frames would wait ~40 ms
        self.set_nodelay(True)
        events, session = self.session.events, self.session
        if session.state == SessionState.closed:  # deleted during the handshake
            self.close(CLOSE_SESSION_GONE, "session closed")
            return
        self._queue.append({"type": "hello", "session_id": session.id, "last_seq": events.seq,
                            "state": session.state.value, "generation": session.generation,
                            "execution_count": session.execution_count,
                            "max_message_bytes": self.services.settings.ws_max_message_bytes})
        if self._since is not None:
            # a since beyond the log's end counts from another log (the session was recreated
            # or the gateway restarted): everything in this one is new to the client
            replay, gap = events.replay(self._since if self._since <= events.seq else 0)
            # the replay is the log's own (bounded) events: it never counts as overflow
            self._queue.extend([gap, *replay] if gap is not None else replay)
        self._limit = len(self._queue) + self.services.settings.ws_client_queue
        self._wake.set()
        events.subscribe(self._enqueue)
        self._writer = asyncio.create_task(self._write_forever())

    def _enqueue(self, event: Event) -> None:
        """Queue ``event`` for this client: at most ws_client_queue events (beyond the replay
        it connected with), one folded stream event and one ``dropped`` notice."""
        queue = self._queue
        if len(queue) < self._limit or close_for(event):
            queue.append(event)
        elif not self._fold(event):
            self._drop(event)
        self._wake.set()

    def _fold(self, event: Event) -> bool:
        """Append a stream event's text to the queued event before it when that one is of the
        same run and stream, up to max_output_bytes: a burst of prints then costs this client
        one event and loses nothing. The folded event has the last seq and says ``first_seq``."""
        last = self._queue[-1] if self._queue else None
        if (last is None or event.get("type") != "stream" or last.get("type") != "stream"
                or last.get("id") != event.get("id") or last.get("name") != event.get("name")):
            return False
        if "_parts" not in last:  # a private copy: queued events are the log's own
            last = {**last, "first_seq": last.get("seq"), "_parts": [last["text"]],
                    "_chars": len(last["text"])}
            self._queue[-1] = last
        text = event["text"]
        if last["_chars"] + len(text) > self.services.settings.max_output_bytes:
            return False
        last["_parts"].append(text)
        last["_chars"] += len(text)
        last["seq"] = event.get("seq")
        if event.get("truncated"):
            last["truncated"] = True
        return True

    def _drop(self, event: Event) -> None:
        """Count ``event`` in the ``dropped`` notice that takes its place in the stream, with
        the seq range lost there (fetchable again with ``since`` while the log keeps it)."""
        queue, seq = self._queue, event.get("seq")
        notice = queue[-1] if queue and queue[-1].get("type") == "dropped" else None
        if notice is None:
            notice = {"type": "dropped", "count": 0, "from_seq": seq, "to_seq": seq}
            queue.append(notice)
        notice["count"] += 1
        if seq is not None:
            notice["from_seq"] = notice["from_seq"] or seq
            notice["to_seq"] = seq

    async def _write_forever(self) -> None:
        # Hand everything queued to the socket, then wait for it to drain once: one loop
        # iteration per batch, not per event, so a burst of small events keeps up with the
        # kernel. At most one queue's worth sits in tornado's write buffer meanwhile.
        base = self.services.settings.ws_client_queue
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    writes = []
                    closing = None
                    while self._queue and not closing:
                        event = _wire(self._queue.popleft())
                        self._limit = max(self._limit - 1, base)  # the replay drains away
                        writes.append(self.write_message(json.dumps(event)))
                        closing = close_for(event)
                    await asyncio.gather(*writes)  # (retrieves every write's error)
                    if closing:
                        self.close(*closing)
                        return
        except websocket.WebSocketClosedError:
            return

    async def on_message(self, message: str | bytes) -> None:
        if self._relay is not None:
            await self._relay.send(message)
            return
        try:
            parsed = WsClientMessage.model_validate({"message": json.loads(message)}).message
        except (ValueError, RecursionError) as exc:
            problem = (validation_error(exc) if isinstance(exc, pydantic.ValidationError)
                       else errors.InvalidJSON("message is not valid JSON"))
            self._reply_error(problem, None)
            return
        cells, session = self.services.manager.cells, self.session
        try:
            if isinstance(parsed, WsExecute):
                req = ExecuteRequest(code=parsed.code, timeout_s=parsed.timeout_s,
                                     stdin=parsed.stdin)
                cells.check(req)
                rid = parsed.id or f"ws-{secrets.token_hex(6)}"
                task = cells.spawn_execute(session, req, rid)
                task.add_done_callback(functools.partial(self._run_failed, request_id=rid))
            elif isinstance(parsed, WsInputReply):
                await cells.reply_input(session, parsed.id, parsed.value)
            else:
                await cells.interrupt(session)
        except errors.GatewayError as exc:
            self._reply_error(exc, getattr(parsed, "id", None))

    def _run_failed(self, task: asyncio.Task[Any], *, request_id: str) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, errors.GatewayError):
            self._reply_error(exc, request_id)
        elif exc is not None:
            log.error("websocket run failed session_id=%s", self.session.id, exc_info=exc)
            self._reply_error(errors.GatewayError("internal error"), request_id)

    def _reply_error(self, exc: errors.GatewayError, request_id: str | None) -> None:
        """A protocol error for this client only (the connection and session stay up)."""
        self._enqueue({"type": "error", "id": request_id, "code": exc.code,
                       "message": exc.message})

    def on_finish(self) -> None:
        if self._relay is not None and self.get_status() != 101:
            self._relay.close()  # tornado refused the upgrade after prepare()

    def on_close(self) -> None:
        self._gone = True
        if self._relay is not None:
            self._relay.close()
        session = getattr(self, "session", None)
        if session is not None:
            session.events.unsubscribe(self._enqueue)
        if self._writer is not None:
            self._writer.cancel()


def refuse_foreign_origin(handler: websocket.WebSocketHandler) -> None:
    """Cross-site WebSocket hijacking guard, as a JSON 403 (tornado's own check, which runs
    again after prepare(), answers in plain text). Called first thing in ``prepare()``."""
    headers = handler.request.headers
    origin = headers.get("Origin")
    if origin is None or headers.get("Sec-Fetch-Site") in ("same-origin", "none"):
        return
    same_host = urllib.parse.urlsplit(origin).netloc.lower() == headers.get("Host", "").lower()
    if not (same_host or handler.check_origin(origin)):
        raise web.HTTPError(403, f"origin {origin[:200]!r} is not allowed here "
                            "(allowed_origins)", reason="Forbidden")


def _wire(event: Event) -> Event:
    """The event as sent: a folded stream event's text joined, a notice's message written."""
    if "_parts" in event:
        wire = {k: v for k, v in event.items() if not k.startswith("_")}
        wire["text"] = "".join(event["_parts"])
        return wire
    if event.get("type") == "dropped":
        event["message"] = f"{event['count']} events dropped: this client reads too slowly"
    return event
