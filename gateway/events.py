"""Session events: kernel output turned into numbered WebSocket events, a bounded replay log,
and live subscribers.

Every cell run in a session (whoever started it: REST or any WebSocket) publishes its events
here; each watcher of the session gets them in ``seq`` order, and a reconnecting client asks
for what it missed with ``since``. Memory is bounded twice: the log keeps at most
``max_events`` events and ``max_bytes`` of payload, and one event carries at most
``max_event_bytes`` (the rest is cut and the event says ``truncated``), all measured the one
way ``gateway.bounds`` measures output. What the log charges for an event is its size as the
publisher knows it cheaply (kernel output: the length of the message's content part, capped
at the event bound; a cell's result: the length of its JSON), else measured with
``bounds.json_size``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from gateway.bounds import OUTPUT_OVERHEAD, clean_text, cut_text, json_size, sanitized, text_size
from gateway.output import error_info

log = logging.getLogger(__name__)

Event = dict[str, Any]
Subscriber = Callable[[Event], None]

# WebSocket close codes for a session's sockets (4000 + the HTTP status it stands for)
CLOSE_SESSION_GONE = 4410  # the session was deleted
CLOSE_RECONNECT = 4503  # its gateway went away, or another gateway serves it now: reconnect


def close_for(event: Event) -> tuple[int, str] | None:
    """The close a session event calls for on its sockets (it is the session's last event
    here), or None."""
    if event.get("type") == "moved":
        return CLOSE_RECONNECT, "another gateway serves the session now; reconnect"
    if event.get("type") == "status" and event.get("state") == "hibernated":
        return CLOSE_RECONNECT, "the session was hibernated; reconnect to restore it"
    if event.get("type") == "status" and event.get("state") == "closed":
        return CLOSE_SESSION_GONE, "session closed"
    return None

EVENT_OVERHEAD = 128  # bytes charged per event besides its payload (type, id, seq, keys)
_IOPUB_TYPES = {"stream", "display_data", "execute_result", "error", "clear_output",
                "update_display_data"}
TOO_LARGE = {"text/plain": "<output too large to stream>"}


def event_from_iopub(msg_type: str, content: dict[str, Any], max_bytes: int) -> Event | None:
    """The WebSocket event for one iopub message, or None for the kernel's own bookkeeping.
    Bounded and cleaned by ``gateway.bounds`` (data and metadata both count)."""
    if msg_type not in _IOPUB_TYPES:
        return None
    if msg_type == "stream":
        text, cut = cut_text(clean_text(str(content.get("text", ""))), max_bytes)
        event: Event = {"type": "stream", "name": clean_text(str(content.get("name", "stdout"))),
                        "text": text}
        if cut:
            event["truncated"] = True
        return event
    if msg_type in ("display_data", "execute_result", "update_display_data"):
        return _display_event(msg_type, content, max_bytes)
    if msg_type == "error":
        return _error_event(content, max_bytes)
    return {"type": "clear_output", "wait": bool(content.get("wait", False))}


def _display_event(msg_type: str, content: dict[str, Any], max_bytes: int) -> Event:
    raw_data, raw_metadata = content.get("data") or {}, content.get("metadata") or {}
    data, data_size = sanitized(raw_data if isinstance(raw_data, dict) else {})
    metadata, metadata_size = sanitized(raw_metadata if isinstance(raw_metadata, dict) else {})
    cut = data_size + metadata_size + OUTPUT_OVERHEAD > max_bytes
    if cut:
        data, metadata = dict(TOO_LARGE), {}
    event: Event = {"type": msg_type, "data": data, "metadata": metadata}
    transient = content.get("transient")
    if isinstance(transient, dict) and isinstance(transient.get("display_id"), str):
        event["display_id"] = clean_text(transient["display_id"])[:256]
    if msg_type == "execute_result":
        count = content.get("execution_count")
        event["execution_count"] = count if isinstance(count, int) else None
    if cut:
        event["truncated"] = True
    return event


def _error_event(content: dict[str, Any], max_bytes: int) -> Event:
    # evalue is str(exception) and the traceback repeats it: both unbounded in the kernel
    info = error_info(content)
    evalue, cut = cut_text(info.evalue, max_bytes)
    budget, lines = max_bytes, []
    for line in info.traceback:
        text, cut_line = cut_text(line, budget)
        lines.append(text)
        budget -= text_size(text)
        if cut_line or budget <= 0:
            cut = True
            break
    event: Event = {"type": "error", "ename": info.ename, "evalue": evalue, "traceback": lines}
    raw = content.get("traceback")
    if cut or (isinstance(raw, list) and len(raw) > len(lines)):
        event["truncated"] = True
    return event


class EventLog:
    """One session's event sequence: publish, replay since a seq, and fan out to subscribers."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.seq = 0
        self._log: collections.deque[tuple[Event, int]] = collections.deque()
        self._bytes = 0
        self._subscribers: list[Subscriber] = []

    def publish(self, event: Event, size: int | None = None) -> Event:
        """Number ``event``, keep it for replay (charged ``size`` bytes, measured when not
        given), and hand it to every subscriber."""
        self.seq += 1
        event["seq"] = self.seq
        if size is None:
            size = json_size(event)
        self._log.append((event, size))
        self._bytes += size
        while self._log and (len(self._log) > self.max_events or self._bytes > self.max_bytes):
            _, dropped = self._log.popleft()
            self._bytes -= dropped
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken watcher must not stop the others
                log.exception("event subscriber failed")
        return event

    def replay(self, since: int) -> tuple[list[Event], Event | None]:
        """Events after ``since``, and a ``gap`` event if some of them are no longer kept."""
        oldest = self._log[0][0]["seq"] if self._log else self.seq + 1
        gap = None
        if since + 1 < oldest and since < self.seq:
            gap = {"type": "gap", "from_seq": since + 1, "to_seq": oldest - 1,
                   "message": f"events {since + 1}..{oldest - 1} are no longer kept"}
        return [event for event, _ in self._log if event["seq"] > since], gap

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    @property
    def watchers(self) -> int:
        return len(self._subscribers)
