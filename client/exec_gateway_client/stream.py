"""One streamed run over the session WebSocket, as a state machine with no I/O.

The sync and async clients feed it every event they read, across reconnects, and act on what
it hands back. It keeps the highest ``seq`` seen, so a reconnect asks for ``?since=<seq>`` and
an event replayed twice is dropped (no line lost, none twice); it picks this run's events out
of the session's (other watchers' runs share the socket); it turns the server's ``dropped``
notice into a resync and its protocol errors into typed errors.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from exec_gateway_client import errors
from exec_gateway_client.models import ExecuteRequest, Output, Result

log = logging.getLogger(__name__)

Event = dict[str, Any]
OUTPUT_TYPES = {"display_data", "execute_result", "update_display_data"}
CLOSE_SESSION_GONE = 4410
CLOSE_RECONNECT = 4503


class Resync(Exception):
    """The server dropped events for this (slow) client: reconnect with ``since``."""


class CellStream:
    """What one streamed run has seen. ``accept(event)`` → the event to deliver, or None."""

    def __init__(self, request: ExecuteRequest) -> None:
        self.request = request
        self.request_id = f"c-{secrets.token_hex(6)}"
        self.last_seq: int | None = None  # None until the first hello
        self.sent = False  # the execute frame went out (set by the driver)
        self.started = False  # the server published an event of this run
        self.result: Result | None = None
        self.lost: list[tuple[int, int]] = []  # seq ranges the server no longer kept

    @property
    def since(self) -> int | None:
        """The ``since`` to reconnect with (None before the first hello)."""
        return self.last_seq

    def execute_frame(self) -> str:
        body = {"type": "execute", "id": self.request_id,
                **self.request.model_dump(exclude_none=True)}
        return json.dumps(body)

    def input_frame(self, value: str) -> str:
        return json.dumps({"type": "input_reply", "id": self.request_id, "value": value})

    def accept(self, event: Event) -> Event | None:
        """Take one event off the socket. Returns it when the caller should act on it (stream,
        output, input_request, result); None for anything else. Raises ``Resync`` after a
        ``dropped`` notice, a typed ``APIError`` for a protocol error about this run,
        ``ConnectionLost`` when the server's log restarted under the run."""
        kind = event.get("type")
        if kind == "hello":
            last = int(event.get("last_seq", 0))
            if self.last_seq is None:
                self.last_seq = last  # events up to here belong to earlier runs
            elif last < self.last_seq:
                raise errors.ConnectionLost(
                    "the gateway restarted while the cell ran: its output and result are gone")
            return None
        if kind == "dropped":
            raise Resync(f"server dropped events {event.get('from_seq')}..{event.get('to_seq')}")
        if kind == "gap":
            span = (int(event.get("from_seq", 0)), int(event.get("to_seq", 0)))
            self.lost.append(span)
            log.warning("events %s..%s of the session were no longer kept; output may be "
                        "missing", *span)
            return None
        seq = event.get("seq")
        if seq is not None:
            if self.last_seq is not None and seq <= self.last_seq:
                return None  # seen before the reconnect
            self.last_seq = seq
        if event.get("id") != self.request_id:
            return None
        if kind == "error" and "code" in event:  # a protocol error for this client, no seq
            if self.started and event["code"] == "bad_request":  # an input reply came too late
                log.warning("input reply refused: %s", event.get("message"))
                return None
            raise errors.error_class(_status_of(event["code"]), event["code"])(
                str(event.get("message", "")), code=event["code"])
        self.started = True
        if kind == "result":
            self.result = Result.model_validate(event["result"])
        return event if kind in ("stream", "input_request", "result") or kind in OUTPUT_TYPES \
            else None


def _status_of(code: str) -> int:
    cls = errors.BY_CODE.get(code)
    return cls.status if cls is not None else 400


def closed_error(code: int | None, reason: str) -> errors.GatewayError | None:
    """What a close of the session socket means: None when reconnecting may resume the run."""
    if code == CLOSE_SESSION_GONE:
        return errors.SessionNotFound(f"the session was deleted while the cell ran ({reason})")
    return None


Callback = Callable[[str], Any] | None


def callback_for(event: Event, on_stdout: Callback, on_stderr: Callback,
                 on_output: Callable[[Output], Any] | None) -> tuple[Any, Any] | None:
    """(callback, argument) that a stream or output event goes to, or None."""
    kind = event["type"]
    if kind == "stream":
        target = on_stdout if event.get("name") == "stdout" else on_stderr
        return (target, event.get("text", "")) if target is not None else None
    if kind in OUTPUT_TYPES and on_output is not None:
        output = Output(type=kind, data=event.get("data") or {},
                        metadata=event.get("metadata") or {})
        return on_output, output
    return None
