"""WireCodec: one kernel connection's Jupyter wire format — signed frames from the kernel
checked and decoded, the gateway's own messages encoded and signed.

Everything a kernel sends is hostile: the HMAC is always checked (constant-time compare), a
message larger than ``max_message_bytes`` or nested deeper than ``bounds.MAX_DEPTH`` is
dropped, and only what JSON decoding alone cannot promise is checked by hand. Decoding is the
receive path's hot spot (five messages per ``1+1``), so it is lean: no date parsing of headers
(``Session.deserialize`` does that; the gateway never reads those dates), one
``raw_decode`` per part, and the depth walk only for parts with enough brackets to nest that
deep. A decoded message keeps its parts' bytes (``wire``) so that a Jupyter client gets
them as they came, without encoding them again. Encoding uses jupyter_client's packer, as
every kernel client does.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from jupyter_client.session import Session

from gateway.bounds import MAX_DEPTH, depth_exceeds

Message = dict[str, Any]

DELIMITER = b"<IDS|MSG>"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_decoder = json.JSONDecoder()
_SPACE = " \t\n\r"


class Rejected(ValueError):
    """A kernel message the gateway will not process (``args[0]``: the reason, a label)."""


def _json(text: str) -> Any:
    """One JSON part (what ``json.loads`` accepts). Raises ValueError."""
    value, end = _decoder.raw_decode(text)
    if end != len(text) and text[end:].strip(_SPACE):
        raise ValueError("extra data after a JSON part")
    return value


def _may_nest_deeper(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether a JSON text could nest deeper than ``limit`` (it needs that many brackets)."""
    return len(data) > limit and data.count(b"[") + data.count(b"{") > limit


class WireCodec:
    """Checks and decodes what one kernel sends; signs what the gateway sends it."""

    def __init__(self, session: Session,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.session = session
        self._auth = session.auth  # an hmac object keyed with the kernel's key (None: unsigned)
        self.max_message_bytes = max_message_bytes

    def decode(self, frames: list[bytes]) -> Message:
        """The message in ``frames`` (routing identities first, as ZMQ hands them over),
        with ``content_bytes``: the length of its content part (what an event made of it
        is sized by). Raises ValueError (Rejected with a reason for messages that are well
        signed but refused)."""
        try:
            start = frames.index(DELIMITER) + 1
        except ValueError:
            raise ValueError("no delimiter") from None
        parts = frames[start:]
        if len(parts) < 5:
            raise ValueError("short message")
        size = sum(map(len, parts))
        if size > self.max_message_bytes:
            raise Rejected("too_large")
        if self._auth is not None:
            mac = self._auth.copy()
            for part in parts[1:5]:
                mac.update(part)
            if not hmac.compare_digest(parts[0], mac.hexdigest().encode()):
                raise ValueError("invalid signature")
        values, exact = [], True  # exact: every part is valid UTF-8 (not only JSON-decodable)
        for part in parts[1:5]:
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError:  # (encoded lone surrogates: json.loads takes them)
                text, exact = part.decode("utf-8", "surrogatepass"), False
            values.append(_json(text))
        header, parent, metadata, content = values
        if type(header) is not dict or type(parent) is not dict or \
                type(metadata) is not dict or type(content) is not dict:
            raise Rejected("malformed")
        msg_id, msg_type = header.get("msg_id"), header.get("msg_type")
        if type(msg_id) is not str or type(msg_type) is not str:
            raise Rejected("malformed")
        if (_may_nest_deeper(parts[4]) and depth_exceeds(content)) or \
                (_may_nest_deeper(parts[3]) and depth_exceeds(metadata)):
            raise Rejected("too_deep")
        return {
            "header": header,
            "msg_id": msg_id,
            "msg_type": msg_type,
            "parent_header": parent,
            "metadata": metadata,
            "content": content,
            "buffers": parts[5:],
            "content_bytes": len(parts[4]),
            # the four JSON parts as the kernel sent them, for Jupyter clients (jupyter.py),
            # when they are valid UTF-8 JSON: checked above, and never changed afterwards
            "wire": parts[1:5] if exact else None,
        }

    def encode(self, msg: Message) -> list[bytes]:
        """Signed frames of ``msg`` (a message dict, buffers included)."""
        frames: list[bytes] = self.session.serialize(msg)
        frames.extend(msg.get("buffers") or [])
        return frames
