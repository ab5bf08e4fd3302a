"""MultipartReader: ``multipart/form-data`` parsed as it streams in, in bounded memory.

``feed`` takes the body chunk by chunk and returns what it found: a part's headers
(``Part``), pieces of its content (``bytes``) and its end (``END``). At most one delimiter's
length of bytes is held back between chunks; part headers are bounded. Raises BadRequest on a
malformed body.
"""

from __future__ import annotations

import email.message
from dataclasses import dataclass

from gateway import errors

MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 1000
END = None  # the current part is complete


@dataclass(frozen=True)
class Part:
    name: str  # the form field's name
    filename: str | None  # set for file parts


Event = Part | bytes | None


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type. Raises BadRequest."""
    msg = email.message.Message()
    msg["content-type"] = content_type
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) \
            or not 0 < len(boundary) <= 70:
        raise errors.BadRequest("expected a multipart/form-data body with a boundary")
    return boundary.encode("latin-1")


def _part(head: bytes) -> Part:
    msg = email.message.Message()
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            raise errors.BadRequest("malformed multipart part header")
        msg[name.strip()] = value.strip()
    if msg.get("content-disposition") is None:
        raise errors.BadRequest("a multipart part has no Content-Disposition")
    field = msg.get_param("name", header="content-disposition")
    return Part(name=field if isinstance(field, str) else "", filename=msg.get_filename())


class MultipartReader:
    def __init__(self, boundary: bytes) -> None:
        self._first = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buf = bytearray()
        self._state = "preamble"
        self._parts = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[Event]:
        """What ``data`` (the next bytes of the body) completes. Raises BadRequest."""
        if self._state == "done":
            return []  # the epilogue is ignored
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended. Raises BadRequest if it ended before the closing delimiter."""
        if self._state != "done":
            raise errors.BadRequest("the multipart body ended early")

    def _step(self, events: list[Event]) -> bool:
        """Advance through the buffer once; False when more bytes are needed."""
        buf = self._buf
        if self._state == "preamble":
            at = buf.find(self._first)
            if at < 0:
                del buf[:max(0, len(buf) - len(self._first))]
                return False
            del buf[:at + len(self._first)]
            self._state = "after_delimiter"
            return True
        if self._state == "after_delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = "done"
                buf.clear()
                return False
            if buf[:2] != b"\r\n":
                raise errors.BadRequest("malformed multipart delimiter")
            del buf[:2]
            self._state = "headers"
            return True
        if self._state == "headers":
            at = buf.find(b"\r\n\r\n")
            if at < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise errors.BadRequest("multipart part headers are too long")
                return False
            self._parts += 1
            if self._parts > MAX_PARTS:
                raise errors.BadRequest(f"more than {MAX_PARTS} multipart parts")
            events.append(_part(bytes(buf[:at])))
            del buf[:at + 4]
            self._state = "body"
            return True
        # body: everything up to the next delimiter is content
        at = buf.find(self._delimiter)
        if at < 0:
            safe = len(buf) - len(self._delimiter) + 1
            if safe > 0:
                events.append(bytes(buf[:safe]))
                del buf[:safe]
            return False
        if at:
            events.append(bytes(buf[:at]))
        events.append(END)
        del buf[:at + len(self._delimiter)]
        self._state = "after_delimiter"
        return True
