"""Frames of the replica link: length-prefixed, numbered, a small JSON head and raw bytes.

One frame is ``>I`` the length of what follows, ``>I`` the call number, ``>H`` the head's
length, the head (JSON) and the body. A request's head is ``{"method", "uri", "headers"}``, an
answer's ``{"code", "headers"}``; headers are ``[name, value]`` pairs. Call number 0 is the
link's own: ``{"goaway": N}`` says the sender takes no call after N (every call numbered
higher was never seen, so it is safe to send elsewhere) and closes once it has answered the
others.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tornado import httputil

PROTOCOL = "exec-gateway-link/1"  # the Upgrade token
PATH = "/v1/replica-link"
CONTROL = 0  # the call number of the link's own frames (goaway)
MAX_HEAD_BYTES = 64 * 1024
_PREFIX = struct.Struct(">IIH")  # length of the rest, call number, head length


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive on a link's socket: a peer that vanished without closing (its host
    went away) is noticed within about two minutes instead of never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # (Linux; elsewhere the system's defaults)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class FrameError(Exception):
    """The peer broke the framing: the link is closed."""


@dataclass(frozen=True)
class Frame:
    call: int
    head: dict[str, Any]
    body: bytes


def encode(call: int, head: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(head, separators=(",", ":")).encode()
    return _PREFIX.pack(6 + len(raw) + len(body), call, len(raw)) + raw + body


class Decoder:
    """Bytes in, whole frames out; a frame over ``max_frame_bytes`` (or a head that is not a
    JSON object) raises FrameError before it is buffered."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _PREFIX.size:
            length, call, head_len = _PREFIX.unpack_from(buffer)
            if length > self.max_frame_bytes or head_len > min(length - 6, MAX_HEAD_BYTES):
                raise FrameError(f"frame of {length} bytes (head {head_len}) refused")
            end = 4 + length
            if len(buffer) < end:
                return
            split = _PREFIX.size + head_len
            try:
                head = json.loads(buffer[_PREFIX.size:split].decode())
            except ValueError as exc:  # (UnicodeDecodeError too)
                raise FrameError("frame head is not JSON") from exc
            if not isinstance(head, dict):
                raise FrameError("frame head is not a JSON object")
            body = bytes(buffer[split:end])
            del buffer[:end]
            yield Frame(call, head, body)


def header_pairs(head: dict[str, Any]) -> list[tuple[str, str]]:
    """A head's ``headers`` as (name, value) pairs; raises FrameError unless they are
    [name, value] string pairs."""
    value = head.get("headers")
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in value):
        raise FrameError("frame headers are not [name, value] string pairs")
    return [(name, v) for name, v in value]


def headers_of(head: dict[str, Any]) -> httputil.HTTPHeaders:
    """A head's ``headers`` (see ``header_pairs``) as tornado's HTTPHeaders."""
    headers = httputil.HTTPHeaders()
    for name, v in header_pairs(head):
        headers.add(name, v)
    return headers
