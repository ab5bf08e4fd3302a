"""Jupyter wire formats: kernel models, the kernelspec, and WebSocket message framing.

Two WebSocket protocols, as jupyter_server speaks them: the legacy one (JSON text frames with a
``channel`` field; a message with binary buffers goes out as one binary frame with a big-endian
offset table) and ``v1.kernel.websocket.jupyter.org`` (every message a binary frame with a
little-endian offset table: channel, header, parent_header, metadata, content, buffers...).
"""

from __future__ import annotations

import itertools
import json
import struct
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from jupyter_client.jsonutil import json_default

from gateway import __version__

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
KERNEL_NAME = "python3"
CHANNELS_IN = ("shell", "control", "stdin")

Message = dict[str, Any]


def timestamp(value: datetime) -> str:
    """Jupyter's ``last_activity`` format: YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kernel_model(kernel_id: str, last_activity: datetime, state: str, connections: int
                 ) -> dict[str, Any]:
    return {
        "id": kernel_id,
        "name": KERNEL_NAME,
        "last_activity": timestamp(last_activity),
        "execution_state": state,
        "connections": connections,
    }


def kernelspec() -> dict[str, Any]:
    return {
        "name": KERNEL_NAME,
        "spec": {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (exec-gateway sandbox)",
            "language": "python",
            "interrupt_mode": "message",
            "env": {},
            "metadata": {"exec-gateway": {"version": __version__}},
        },
        "resources": {},
    }


def _dumps(obj: Any) -> bytes:
    try:
        return json.dumps(obj, default=json_default, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # a lone surrogate, which a kernel may send ("\ud800"): \u escapes keep it exactly
        return json.dumps(obj, default=json_default).encode()


def _loads(data: str | bytes) -> Any:
    """JSON from a client. Raises ValueError, also for nesting too deep to parse."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


# ---------------------------------------------------------------- kernel → client
def to_legacy(msg: Message, channel: str) -> str | bytes:
    """One message in the legacy protocol: a text frame, or a binary frame if it has buffers.
    A kernel's message goes out with its JSON parts as the kernel sent them (``wire``, set by
    ``gateway.wire`` when they are valid UTF-8 JSON), others are encoded here."""
    buffers = [bytes(b) for b in msg.get("buffers") or []]
    wire = msg.get("wire")
    if wire is not None:
        text = b'{"header": %b, "parent_header": %b, "metadata": %b, "content": %b, ' \
               b'"msg_id": %b, "msg_type": %b, "channel": %b}' % (
                   *wire, _dumps(msg["header"].get("msg_id")),
                   _dumps(msg["header"].get("msg_type")), _dumps(channel))
        return text.decode() if not buffers else _legacy_binary([text, *buffers])
    body = {
        "header": msg["header"],
        "parent_header": msg["parent_header"],
        "metadata": msg["metadata"],
        "content": msg["content"],
        "msg_id": msg["header"].get("msg_id"),
        "msg_type": msg["header"].get("msg_type"),
        "channel": channel,
    }
    if not buffers:
        return _dumps(body).decode()
    return _legacy_binary([_dumps(body), *buffers])


def _legacy_binary(parts: list[bytes]) -> bytes:
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack("!" + "I" * (len(parts) + 1), len(parts), *offsets) + b"".join(parts)


def to_v1(msg: Message, channel: str) -> bytes:
    """One message as a v1.kernel.websocket.jupyter.org binary frame (a kernel's JSON parts
    as it sent them, see ``to_legacy``)."""
    wire = msg.get("wire")
    json_parts = wire if wire is not None else [
        _dumps(msg["header"]), _dumps(msg["parent_header"]), _dumps(msg["metadata"]),
        _dumps(msg["content"])]
    parts = [channel.encode(), *json_parts, *(bytes(b) for b in msg.get("buffers") or [])]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    table = b"".join(n.to_bytes(8, "little") for n in (len(offsets), *offsets))
    return table + b"".join(parts)


# ---------------------------------------------------------------- client → kernel
def from_legacy(frame: str | bytes) -> tuple[str, Message]:
    """(channel, message) from a legacy frame. Raises ValueError on anything malformed."""
    buffers: list[bytes] = []
    if isinstance(frame, bytes):
        if len(frame) < 4:
            raise ValueError("short binary frame")
        count = struct.unpack("!I", frame[:4])[0]
        if not 1 <= count <= 1024 or len(frame) < 4 * (count + 1):
            raise ValueError("bad offset table")
        offsets = [*struct.unpack("!" + "I" * count, frame[4:4 * (count + 1)]), len(frame)]
        _check_offsets(offsets, 4 * (count + 1), len(frame))
        pieces = [frame[a:b] for a, b in itertools.pairwise(offsets)]
        frame, buffers = pieces[0].decode(), pieces[1:]
    body = _loads(frame)
    if not isinstance(body, dict):
        raise ValueError("message is not an object")
    channel = body.get("channel")
    # as jupyter_server does: a legacy message that names no channel is for shell
    return _checked("shell" if channel is None else channel, body, buffers)


def from_v1(frame: bytes) -> tuple[str, Message]:
    """(channel, message) from a v1 binary frame. Raises ValueError on anything malformed."""
    if not isinstance(frame, bytes) or len(frame) < 8:
        raise ValueError("v1 frames are binary")
    count = int.from_bytes(frame[:8], "little")
    if not 6 <= count <= 1024 or len(frame) < 8 * (count + 1):
        raise ValueError("bad offset table")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    _check_offsets(offsets, 8 * (count + 1), len(frame))
    pieces = [frame[a:b] for a, b in itertools.pairwise(offsets)]
    channel = pieces[0].decode()
    header, parent, metadata, content = (_loads(p) for p in pieces[1:5])
    body = {"header": header, "parent_header": parent, "metadata": metadata, "content": content}
    return _checked(channel, body, list(pieces[5:]))


def _check_offsets(offsets: list[int], table_end: int, frame_end: int) -> None:
    """Offsets must start after the offset table, never go back, and stay inside the frame."""
    if offsets[0] < table_end or offsets != sorted(offsets) or offsets[-1] > frame_end:
        raise ValueError("bad offsets")


def _checked(channel: Any, body: dict[str, Any], buffers: list[bytes]) -> tuple[str, Message]:
    if channel not in CHANNELS_IN:
        raise ValueError(f"cannot send on channel {channel!r}")
    header = body.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("msg_id"), str) \
            or not isinstance(header.get("msg_type"), str):
        raise ValueError("header needs msg_id and msg_type strings")
    for key in ("parent_header", "metadata", "content"):
        if not isinstance(body.get(key) or {}, dict):
            raise ValueError(f"{key} must be an object")
    msg = {
        "header": header,
        "parent_header": body.get("parent_header") or {},
        "metadata": body.get("metadata") or {},
        "content": body.get("content") or {},
        "buffers": buffers,
    }
    return channel, msg


def gateway_message(msg_type: str, content: dict[str, Any],
                    parent_header: dict[str, Any] | None = None) -> Message:
    """A message the gateway itself sends a Jupyter client, shaped as a kernel's."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": msg_type, "username": "gateway",
              "session": "exec-gateway", "date": datetime.now(UTC).isoformat(),
              "version": "5.3"}
    return {"header": header, "parent_header": parent_header or {}, "metadata": {},
            "content": content, "buffers": [], "msg_id": msg_id, "msg_type": msg_type}


def status_message(state: str) -> Message:
    """An iopub status made by the gateway (starting/restarting/dead), as a kernel would send."""
    return gateway_message("status", {"execution_state": state})
